"""The kernel cache: builds once, under a lock, atomically; failures stay with their instance."""
import multiprocessing
import threading

import pytest

from build_support import FakeCompiler, tiny_spec
from fmha_bench.build.cache import build_all, build_instance, cache_root, ensure_writable
from fmha_bench.errors import UserError


@pytest.fixture
def compiler(tmp_path):
    return FakeCompiler(tmp_path / "compiles.log")


def build(specs, compiler, root, **kwargs):
    return build_all(specs, root=root, choose=lambda arch: compiler, jobs=2, **kwargs)


def test_cache_dir_follows_fmha_bench_cache_and_the_tool_version(monkeypatch, tmp_path):
    monkeypatch.setenv("FMHA_BENCH_CACHE", str(tmp_path / "c"))
    from fmha_bench import __version__
    assert cache_root() == tmp_path / "c" / f"v{__version__}"


def test_object_lands_under_arch_with_the_instance_name(compiler, tmp_path):
    result = build_instance(tiny_spec("gfx942"), compiler, tmp_path / "cache")
    assert result.status == "built" and result.ok
    assert result.path == tmp_path / "cache" / "gfx942" / f"{result.name}.co"
    assert result.path.read_bytes().endswith(b"code") and result.size_bytes == result.path.stat().st_size


def test_a_source_edited_during_the_build_still_gets_its_result(compiler, tmp_path, monkeypatch):
    import shutil
    from build_support import TINY
    from fmha_bench.build import cache
    source = tmp_path / "tiny.hip"
    shutil.copy(TINY, source)
    real_build_instance = cache.build_instance

    def edit_then_build(spec, *args):   # another process saves the kernel source mid-build
        source.write_text(source.read_text() + "\n// edited\n")
        return real_build_instance(spec, *args)

    monkeypatch.setattr(cache, "build_instance", edit_then_build)
    (result,) = build([tiny_spec("gfx942", source=source)], compiler, tmp_path / "cache").values()
    assert result is not None and result.status == "built"


def test_second_build_compiles_nothing_and_reports_cached(compiler, tmp_path):
    specs = [tiny_spec("gfx942"), tiny_spec("gfx90a"), tiny_spec("gfx1100")]
    first = build(specs, compiler, tmp_path / "cache")
    second = build(specs, compiler, tmp_path / "cache")
    assert [r.status for r in first.values()] == ["built"] * 3
    assert [r.status for r in second.values()] == ["cached"] * 3
    assert compiler.compiles() == 3


def test_force_recompiles_cached_instances(compiler, tmp_path):
    build([tiny_spec()], compiler, tmp_path / "cache")
    (result,) = build([tiny_spec()], compiler, tmp_path / "cache", force=True).values()
    assert result.status == "built" and compiler.compiles() == 2


def test_repeated_specs_build_once(compiler, tmp_path):
    results = build([tiny_spec(), tiny_spec(), tiny_spec()], compiler, tmp_path / "cache")
    assert len(results) == 1 and compiler.compiles() == 1


def test_compile_error_fails_only_its_instance_and_carries_the_message(tmp_path):
    compiler = FakeCompiler(tmp_path / "log", fail_labels=("bad",))
    results = build([tiny_spec(label="good"), tiny_spec(label="bad"), tiny_spec(label="fine")],
                    compiler, tmp_path / "cache")
    status = {r.spec.label: r for r in results.values()}
    assert status["good"].status == status["fine"].status == "built"
    bad = status["bad"]
    assert bad.status == "failed" and bad.path is None and not bad.ok
    assert bad.name in bad.error and "error: bad is broken" in bad.error and "fake-cc" in bad.error


def test_failed_compile_leaves_no_file_behind(tmp_path):
    compiler = FakeCompiler(tmp_path / "log", fail_labels=("bad",))
    build([tiny_spec(label="bad")], compiler, tmp_path / "cache")
    leftovers = [p.name for p in (tmp_path / "cache" / "gfx942").iterdir()]
    assert all(name.endswith(".lock") for name in leftovers)


def test_arch_without_a_compiler_fails_its_instances_with_the_reason(compiler, tmp_path):
    def choose(arch):
        return "no compiler for gfx950: too new" if arch.name == "gfx950" else compiler
    results = build_all([tiny_spec("gfx950"), tiny_spec("gfx942")], root=tmp_path / "c",
                        choose=choose)
    by_arch = {r.spec.arch: r for r in results.values()}
    assert by_arch["gfx950"].status == "failed" and "too new" in by_arch["gfx950"].error
    assert by_arch["gfx942"].status == "built"


def test_object_appears_whole_or_not_at_all(tmp_path):
    """While the compiler writes, the final path does not exist; readers never see half a file."""
    seen = []

    class Watching(FakeCompiler):
        def compile(self, spec, out_path):
            super().compile(spec, out_path)
            final = out_path.parent / (out_path.name.split(".")[1] + ".co")
            seen.append((out_path == final, final.exists()))

    result = build_instance(tiny_spec(), Watching(tmp_path / "log"), tmp_path / "cache")
    assert seen == [(False, False)] and result.path.exists()


def test_threads_building_the_same_instance_compile_it_once(tmp_path):
    compiler = FakeCompiler(tmp_path / "log", delay_s=0.2)
    barrier = threading.Barrier(4)
    results = []

    def worker():
        barrier.wait()
        results.append(build_instance(tiny_spec(), compiler, tmp_path / "cache"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compiler.compiles() == 1
    assert sorted(r.status for r in results) == ["built", "cached", "cached", "cached"]


def _build_in_child(root, log, barrier, statuses):
    barrier.wait()
    result = build_instance(tiny_spec(), FakeCompiler(log, delay_s=0.3), root)
    statuses.put(result.status)


def test_processes_building_the_same_instance_compile_it_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, statuses = ctx.Barrier(3), ctx.Queue()
    children = [ctx.Process(target=_build_in_child,
                            args=(tmp_path / "cache", tmp_path / "log", barrier, statuses))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert sorted(statuses.get(timeout=5) for _ in children) == ["built", "cached", "cached"]
    assert len((tmp_path / "log").read_text().splitlines()) == 1


def test_unwritable_cache_dir_is_a_user_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError) as e:
        ensure_writable(blocker / "cache")
    assert str(blocker / "cache") in str(e.value) and "FMHA_BENCH_CACHE" in str(e.value)

