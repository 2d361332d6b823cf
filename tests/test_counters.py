import threading

from sflow_app._counters import CounterBlock


def test_64_threads_lose_no_increment() -> None:
    block = CounterBlock(["a", "b", "bytes"])
    per_thread, threads = 20_000, 64
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        incr = block.incr[i % 2]
        barrier.wait()
        for _ in range(per_thread):
            incr()
            if _ % 100 == 0:
                block.add(2, 7)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    a, b, nbytes = block.snapshot()
    assert a == b == per_thread * threads // 2
    assert nbytes == 7 * (per_thread // 100) * threads


def test_naive_shared_increment_would_lose_updates() -> None:
    """Documents why the cells exist: a plain += on shared state is not exact."""
    import sys

    box = [0]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def plus(v: int) -> int:
            return v + 1

        def work() -> None:
            for _ in range(100_000):
                # read, add, store: a thread switch can fall between (3.11 checks for one
                # on every Python call; other versions check more often).
                box[0] = plus(box[0])

        ts = [threading.Thread(target=work) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert box[0] < 800_000


def test_rebase_restarts_from_zero_keeping_cells() -> None:
    block = CounterBlock(["x"])
    incr = block.incr[0]
    for _ in range(5):
        incr()
    block.add(0, 10)
    assert block.snapshot() == (15,)
    block.rebase()
    assert block.snapshot() == (0,)
    incr()
    assert block.snapshot() == (1,)
    assert block.index("x") == 0
