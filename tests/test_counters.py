import itertools
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


def test_snapshots_beside_increments_count_each_exactly_once() -> None:
    # snapshot() reads a cell with next() (it adds one, then takes its reads back): taken
    # over and over while threads count, and from two threads at once, the counts only
    # grow and end exact.
    block = CounterBlock(["a", "b"])
    threads, least = 4, 20_000
    barrier = threading.Barrier(threads + 2)
    seen: list[list[tuple[int, ...]]] = [[], []]
    counted = [0] * threads

    def count(i: int) -> None:
        incr = block.incr[i % 2]
        barrier.wait()
        n = 0
        # Until both readers have read many times in between (however the threads run).
        while n < least or min(map(len, seen)) < 50:
            incr()
            n += 1
        counted[i] = n

    def read(out: list[tuple[int, ...]]) -> None:
        barrier.wait()
        while not all(counted):
            out.append(block.snapshot())

    counters = [threading.Thread(target=count, args=(i,)) for i in range(threads)]
    readers = [threading.Thread(target=read, args=(out,)) for out in seen]
    for t in counters + readers:
        t.start()
    for t in counters + readers:
        t.join()
    totals = (sum(counted[0::2]), sum(counted[1::2]))
    assert block.snapshot() == totals
    for out in seen:  # never back, never ahead of what was counted
        for earlier, later in itertools.pairwise(out):
            assert all(e <= x for e, x in zip(earlier, later, strict=True)), (earlier, later)
        assert all(a <= totals[0] and b <= totals[1] for a, b in out)
