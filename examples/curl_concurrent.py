"""N slow HTTP(S) requests at once through pycurl (libcurl), each on its
own coroutine with the easy interface, used exactly as in blocking code.

    python -m interpose run examples/curl_concurrent.py URL [N] [--cacert FILE]
    python -m interpose run examples/curl_concurrent.py https://example.test/slow 10

Each of the N coroutines (default 10) makes one easy handle and calls
``perform()``.  libcurl drives its sockets with non-blocking calls and
poll; under ``python -m interpose run`` the poll parks the coroutine, so N
requests to a slow URL take about as long as one.  ``--cacert`` names a
CA bundle for HTTPS (a self-signed test server).  Prints one line per
request (status and body size), then ``N requests in T s``.
"""
import argparse
import io
import time

import pycurl

import interpose


def fetch(url, cacert, i):
    body = io.BytesIO()
    curl = pycurl.Curl()
    try:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEDATA, body)
        if cacert:
            curl.setopt(pycurl.CAINFO, cacert)
        curl.perform()
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        return f"request {i}: HTTP {status}, {len(body.getvalue())} bytes"
    finally:
        curl.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("n", type=int, nargs="?", default=10)
    parser.add_argument("--cacert")
    args = parser.parse_args()
    t0 = time.monotonic()
    requests = [interpose.spawn(fetch, args.url, args.cacert, i)
                for i in range(args.n)]
    for r in requests:
        print(r.join())
    print(f"{args.n} requests in {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
