#!/usr/bin/env python3
"""Memory of TLS downloads whose client stopped reading.

Starts `imapgate demo` as the backend (its in-process IMAP server behind its own listener)
and `imapgate serve` in front of it with an implicit-TLS listener, appends one 12 MB
message, then opens N TLS sessions that each log in, select INBOX, send
`FETCH 1:* BODY.PEEK[]` and never read the answer (receive buffer 4 KiB), and prints the
growth of the serve process's VmRSS per session once it settles. Loopback ports
21143-21145 and 21993; needs openssl for a throwaway certificate.

    python3 deploy/bench/stalled_tls.py ./imapgate 100
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import imaplib


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    binary, n = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    work = tempfile.mkdtemp(prefix="imapgate-stalled-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=127.0.0.1"],
                   cwd=work, check=True, capture_output=True)
    with open(os.path.join(work, "cfg.yaml"), "w") as f:
        f.write("listeners:\n  - name: tls\n    address: \"127.0.0.1:21993\"\n    tls: implicit\n"
                "tls:\n  cert_file: cert.pem\n  key_file: key.pem\nlog:\n  level: warn\n"
                "routing:\n  shards:\n    - name: a\n      backends:\n        - address: \"127.0.0.1:21143\"\n")
    backend = subprocess.Popen([binary, "demo", "-imap", "127.0.0.1:21143", "-imaps", "127.0.0.1:21144",
                                "-admin", "127.0.0.1:21145", "-log-level", "warn"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([binary, "serve", "-config", "cfg.yaml"], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        for _ in range(100):  # at most 10 s for both to listen
            try:
                c = imaplib.IMAP4_SSL("127.0.0.1", 21993, ssl_context=ctx)
                break
            except OSError:
                time.sleep(0.1)
        c.login("alice@example.com", "alice")
        c.append("INBOX", None, None, b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 12000)
        c.logout()
        time.sleep(1)
        base = rss_kib(proxy.pid)
        held = []
        for i in range(n):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", 21993))
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            f = s.makefile("rb")
            f.readline()
            for tag, cmd in ((b"a", b"a LOGIN alice@example.com alice\r\n"), (b"b", b"b SELECT INBOX\r\n")):
                s.sendall(cmd)
                line = f.readline()
                while line and not line.startswith(tag + b" "):
                    line = f.readline()
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"session {i}: {line!r}")
            s.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n")  # and never read the answer
            held.append((s, f))
        prev, now = 0, base
        for _ in range(40):  # until VmRSS settles, at most 20 s
            time.sleep(0.5)
            now = rss_kib(proxy.pid)
            if abs(now - prev) < 32:
                break
            prev = now
        print(f"imapgate serve VmRSS {base} KiB before, {now} KiB with {n} stalled TLS downloads: "
              f"{(now - base) / n:.1f} KiB per session")
    finally:
        for p in (proxy, backend):
            p.send_signal(signal.SIGTERM)
        for p in (proxy, backend):
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
