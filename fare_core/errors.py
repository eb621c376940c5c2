"""Exceptions shared by the compiled core and its twin, so callers catch one class whichever runs."""


class FareCoreError(Exception):
    """Base of every fare_core error."""


class WalletError(FareCoreError):
    """A wallet image has the wrong size or no valid slot."""


class FareTableError(FareCoreError):
    """A fare table artefact is truncated, corrupt, of an unknown layout or inconsistent."""


class DenyListError(FareCoreError):
    """A deny-list snapshot or delta cannot be applied; the list is left as it was."""


class DenyListBaseMismatch(DenyListError):
    """The delta applies to another version than the one held (ask for a snapshot)."""


class DenyListStale(DenyListError):
    """The update is not newer than the list held; an older version never replaces a newer one."""


class DenyListChecksumMismatch(DenyListError):
    """The result of applying the update does not match its checksum."""


class DenyListCorrupt(DenyListError):
    """A snapshot or delta is truncated or malformed."""
