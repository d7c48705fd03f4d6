"""llm.py's own cost, measured on the local fake server: concurrency efficiency and per-call overhead.

    python -m bench client [--quick]

Every number is measured on this machine in this run; nothing else is on the wire.
"""


def bench_client(args) -> None:
    """llm.py on the fake server (fake_server.py), nothing else on the wire.

    1. 64 requests to a server with a fixed 200 ms latency, by workers: wall time and efficiency =
       ideal / measured, ideal = ceil(64 / workers) x 0.2 s (what perfect threads would take).
    2. Per-call cost on a 0-latency server, one worker: a bare requests.Session.post of the same body
       (the floor: HTTP + the fake server itself), Client.chat without and with the cache file, and a
       cache hit; chat minus the bare post is the client's own overhead.
    """
    import json
    import math
    import tempfile
    import time

    import requests

    from llm import Client, ClientConfig
    from servers.fake_mllm import FakeServer, reply

    def ask(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f"question {i}: is it a vessel?"}]}

    print("command: python -m bench client" + (" --quick" if args.quick else ""))
    n, latency = 64, 0.2
    print(f"\n{n} requests, fake server latency {latency * 1000:.0f} ms")
    print(f"{'workers':>8} {'wall s':>8} {'ideal s':>8} {'efficiency':>10}")
    with FakeServer(latency=latency) as srv:
        for workers in (1, 4, 8, 16):
            if args.quick and workers == 1:
                continue
            client = Client(ClientConfig(base_url=srv.url, model="fake-model", workers=workers))
            t0 = time.perf_counter()
            out = client.map_chat([ask(i) for i in range(n)])
            wall = time.perf_counter() - t0
            assert all(r.content == "ok" for r in out), "a request failed"
            ideal = math.ceil(n / workers) * latency
            print(f"{workers:>8} {wall:>8.2f} {ideal:>8.2f} {ideal / wall:>10.2f}")

    calls = 200 if args.quick else 1000
    print(f"\nper call, 0-latency fake server, one worker, {calls} calls")
    print(f"{'what':<44} {'ms/call':>8}")
    with FakeServer(lambda body: reply({"answer": "yes"})) as srv, tempfile.TemporaryDirectory() as tmp:
        session, url = requests.Session(), srv.url + "/chat/completions"
        body = {**ask(0), "stream": False, "max_tokens": 2048, "temperature": 0.0, "model": "fake-model"}

        def per_call(fn) -> float:
            fn(-1)  # warm-up: open the keep-alive connection
            t0 = time.perf_counter()
            for i in range(calls):
                fn(i)
            return (time.perf_counter() - t0) / calls * 1000

        rows = [
            (
                "bare requests.Session.post (floor)",
                per_call(
                    lambda i: json.loads(session.post(url, json={**body, **ask(i)}, timeout=10).content)
                ),
            )
        ]
        plain = Client(ClientConfig(base_url=srv.url, model="fake-model"))
        rows.append(("Client.chat, no cache", per_call(lambda i: plain.chat(**ask(i)))))
        cached = Client(ClientConfig(base_url=srv.url, model="fake-model", cache_path=f"{tmp}/cache.jsonl"))
        rows.append(("Client.chat, cache miss (appends a line)", per_call(lambda i: cached.chat(**ask(i)))))
        rows.append(("Client.chat, cache hit (no HTTP)", per_call(lambda i: cached.chat(**ask(i)))))
        assert cached.usage.cache_hits == calls + 1, cached.usage
        for what, ms in rows:
            print(f"{what:<44} {ms:>8.3f}")
        print(f"{'client overhead (no cache - floor)':<44} {rows[1][1] - rows[0][1]:>8.3f}")
