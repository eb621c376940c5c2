"""Write Mosquitto's password file and ACL for the backend account and every gate.

    python -m backend.deploy.mosquitto_config --prefix faregate --out /etc/mosquitto/faregate \\
        --backend-password-file backend.secret --gates 12-1 12-2 12-3

Each gate logs in with its gate id as username and may publish only its own taps, status and requests,
and read only its own committed/resend/command topics plus the shared deny-list, fare table and action
list. The backend account reads and writes everything under the prefix (including the shared
subscription). Passwords are random unless given, and are printed once as `gate_id password` lines.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
from pathlib import Path

from protocol.mqtt import parse_gate_id

from .acl import acl_text

CONF = Path(__file__).parent / "mosquitto" / "mosquitto.conf"


def write_config(
    out: Path,
    prefix: str,
    gates: list[str],
    backend_user: str,
    backend_password: str,
    gate_passwords: dict[str, str] | None = None,
    port: int = 1883,
    run_as: str | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    acl_prefix: str | None = None,
) -> dict[str, str]:
    """Write mosquitto.conf, faregate.passwd and faregate.acl into `out`; returns {gate: password}.

    `tls` (CA file, certificate, key) makes the listener TLS-only. `acl_prefix` (default `prefix`) may
    hold '+' levels, for one broker shared by several prefixes (the test session's Mosquitto).
    """
    for gate in gates:
        parse_gate_id(gate)  # refuse anything that is not a gate id (it becomes an ACL username)
    out.mkdir(parents=True, exist_ok=True)
    passwords = {gate: (gate_passwords or {}).get(gate) or secrets.token_urlsafe(18) for gate in gates}
    passwd = out / "faregate.passwd"
    passwd.touch(0o600)
    passwd.chmod(0o600)
    accounts = [(backend_user, backend_password), *passwords.items()]
    if any(not password or "\n" in password for _, password in accounts):
        raise ValueError("a password must be one non-empty line")
    # plain `user:password` lines hashed in place by one mosquitto_passwd run (-U), not one run per user
    passwd.write_text("".join(f"{user}:{password}\n" for user, password in accounts))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    (out / "faregate.acl").write_text(acl_text(acl_prefix or prefix, backend_user))
    conf = CONF.read_text().replace("password_file faregate.passwd", f"password_file {passwd}")
    conf = conf.replace("acl_file faregate.acl", f"acl_file {out / 'faregate.acl'}")
    listener = f"listener {port} 127.0.0.1"
    if tls:
        cafile, certfile, keyfile = tls
        listener += f"\ncafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\ntls_version tlsv1.2"
    conf = conf.replace("listener 1883 127.0.0.1", listener)
    conf = conf.replace("persistence_location ./", f"persistence_location {out}/")
    if run_as:  # the account mosquitto runs as when started by root (it must read the password file)
        conf += f"user {run_as}\n"
    (out / "mosquitto.conf").write_text(conf)
    return passwords


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.deploy.mosquitto_config", description=__doc__)
    parser.add_argument("--prefix", default="faregate")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backend-user", default="faregate-backend")
    parser.add_argument("--backend-password-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--gates", nargs="+", required=True)
    args = parser.parse_args()
    passwords = write_config(
        args.out,
        args.prefix,
        args.gates,
        args.backend_user,
        args.backend_password_file.read_text().strip(),
        port=args.port,
    )
    for gate, password in passwords.items():
        print(gate, password)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
