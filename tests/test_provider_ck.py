"""`ck`: Problem -> tile_example_fmha_fwd flags (exact, or skipped with the reason), its result
line in every variant, the binary's lookup, and whole runs against fake CK binaries."""
import math

import pytest

from fake_tools import H100, MI300X, MI355X, QUICK, printing_tool, write_tool
from fmha_bench.errors import UserError
from fmha_bench.problem import Problem
from fmha_bench.providers import get_providers
from fmha_bench.providers.ck import CkProvider, NotMapped, parse_ck_output, problem_flags
from fmha_bench.sweep import load_sweep

KNAME = ("fmha_fwd_d128_fp16_batch_b128x128x32x128x32x128_r4x1x1_r4x1x1_w32x32x16_w32x32x16_qr_async_vr_psddv"
         "_nlogits_nbias_nmask_nlse_ndropout_nqscale")
SPLIT_KNAME = "fmha_fwd_splitkv_d128_bf16_batch_b64x128x32x128x32x128_r4x1x1_r4x1x1_w16x16x16_w16x16x16_qr_nmask"
COMBINE_KNAME = "fmha_fwd_splitkv_combine_d128_bf16_batch_b32_nlse"
HEAD = "[fp16|batch|bhsd] b:2, h:8/8, s:3328/3328, d:128/128, scale_s:0.0883883, bias:n, p_drop:0, lse:0"
LINE_OK = f"{HEAD}, qscale:n, mask:n, v:r, {KNAME}, 0.123 ms, 723.45 TFlops, 456.78 GB/s, valid:y\n"


def flags(**fields) -> dict:
    """The point's CK flags as {name: value}."""
    return dict(flag[1:].split("=", 1) for flag in problem_flags(Problem(**fields).validate()))


def reason(device=MI300X, **fields) -> str:
    return CkProvider("/opt/ck/tile_example_fmha_fwd").supports(Problem(**fields).validate(), device)


# ----------------------------------------------------------------------------- mapping
def test_a_dense_batch_point_maps_to_every_flag_in_order():
    problem = Problem(batch=2, seqlen_q=3328, nhead_q=8, hdim_q=128).validate()
    assert problem_flags(problem) == [
        "-prec=fp16", "-mode=0", "-b=2", "-h=8", "-h_k=8", "-s=3328", "-s_k=3328", "-d=128", "-d_v=128",
        f"-scale_s={1 / math.sqrt(128)!r}", "-logits_soft_cap=0.0", "-mask=0", "-lse=0", "-bias=n", "-iperm=1",
        "-operm=1", "-vlayout=r", "-num_splits=1", "-page_block_size=0"]


def test_group_mode_gives_every_sequence_length_so_ck_draws_none():
    varlen = flags(mode="group", batch=4, seqlen_q=[128, 0, 1, 777], seqlen_k=[256, 5, 1, 777])
    assert (varlen["mode"], varlen["s"], varlen["s_k"]) == ("1", "128,0,1,777", "256,5,1,777")
    uniform = flags(mode="group", batch=3, seqlen_q=64, seqlen_k=80)
    assert (uniform["s"], uniform["s_k"]) == ("64,64,64", "80,80,80")


def test_gqa_hdim_v_lse_soft_cap_and_scale_map_to_their_flags():
    f = flags(nhead_q=32, nhead_k=4, hdim_q=192, hdim_v=128, lse=True, soft_cap=30, scale=0.125, dtype="bf16")
    assert (f["h"], f["h_k"], f["d"], f["d_v"]) == ("32", "4", "192", "128")
    assert (f["lse"], f["logits_soft_cap"], f["scale_s"], f["prec"]) == ("1", "30.0", "0.125", "bf16")


@pytest.mark.parametrize("mask, expected", [
    ("none", "0"), ("causal", "b"), ("causal_tl", "t"), ("t:64,0", "t:64,0"), ("b:128,0", "b:128,0"),
    ("window:16,16", "b:16,16"), ("xt:5", "t:2,2"), ("b:-1,8", "b:-1,8"), ("b:64,-1", "b:64,-1"),
    ("b:32,0,4", "b:32,0,4"), ("t:8,0,2", "t:8,0,2")])
def test_masks_of_both_alignments_windows_and_sinks_use_cks_grammar(mask, expected):
    assert flags(mask=mask, seqlen_q=100, seqlen_k=300)["mask"] == expected


@pytest.mark.parametrize("page_size", [128, 256, 1024])
def test_a_vllm_paged_point_with_pages_of_a_multiple_of_128_maps(page_size):
    f = flags(family="paged", batch=4, seqlen_q=1, seqlen_k=4000, page_size=page_size, nhead_q=32, nhead_k=8)
    assert (f["page_block_size"], f["num_splits"]) == (str(page_size), "1")
    assert reason(family="paged", seqlen_q=1, seqlen_k=4000, page_size=page_size) is None


@pytest.mark.parametrize("fields, expected", [
    ({"page_size": 16}, "page_size 16: CK's paged kernels need a multiple of 128"),
    ({"page_size": 1}, "page_size 1: CK's paged kernels need a multiple of 128"),
    ({"page_size": 128, "page_table": "sglang"}, "page_table sglang: CK takes a 2-D block table (page_table vllm)"),
    ({"page_size": 128, "page_table": "headwise"}, "page_table headwise: CK takes a 2-D block table"),
    ({"page_size": 128, "kv_layout": "nhd"}, "kv_layout nhd: CK's cache is heads-first with BHSD Q"),
])
def test_paged_points_ck_cannot_express_are_skipped_saying_why(fields, expected):
    assert reason(family="paged", seqlen_q=1, seqlen_k=1000, **fields).startswith(expected)


def test_split_kv_passes_the_split_count_and_zero_means_cks_heuristic():
    assert flags(family="splitkv", num_splits=4, seqlen_q=64, seqlen_k=8192)["num_splits"] == "4"
    assert flags(family="splitkv", num_splits=0, seqlen_q=64, seqlen_k=8192)["num_splits"] == "0"
    paged_split = flags(family="paged", num_splits=8, seqlen_q=1, seqlen_k=8192, page_size=256)
    assert (paged_split["num_splits"], paged_split["page_block_size"]) == ("8", "256")
    assert reason(family="splitkv", num_splits=200, seqlen_q=64, seqlen_k=8192) == \
        "num_splits 200: CK takes at most 128"


def test_fp8_is_cks_fp8bf16_with_per_tensor_descales_in_the_devices_native_format():
    f = flags(dtype="fp8_e4m3fnuz")
    assert (f["prec"], f["qscale"]) == ("fp8bf16", "pt")
    assert reason(MI300X, dtype="fp8_e4m3fnuz") is None
    assert reason(MI300X, dtype="fp8_e4m3fn") == "CK's fp8 on gfx942 is e4m3fnuz; this point is fp8_e4m3fn"
    assert reason(MI355X, dtype="fp8_e4m3fn") is None
    assert "qscale" not in flags(dtype="fp16")


def test_fp32_maps_to_its_own_precision():
    assert flags(dtype="fp32")["prec"] == "fp32"


@pytest.mark.parametrize("fields, expected", [
    ({"family": "appendkv", "page_size": 128, "seqlen_q": 4, "seqlen_k": 100}, "CK's append-KV path"),
    ({"family": "mla", "page_size": 64, "nhead_k": 1, "hdim_q": 576, "hdim_v": 512, "kv_layout": "nhd",
      "seqlen_q": 1, "seqlen_k": 100}, "MLA decode is not in tile_example_fmha_fwd"),
    ({"family": "mixed", "mode": "group", "batch": 2, "seqlen_q": [100, 1], "seqlen_k": [100, 50], "page_size": 16},
     "a mixed prefill+decode batch"),
    ({"sink": True}, "learned sink logits"),
])
def test_what_ck_does_not_run_is_skipped_with_the_reason(fields, expected):
    assert reason(**fields).startswith(expected)
    with pytest.raises(NotMapped):
        problem_flags(Problem(**fields).validate())


def test_ck_runs_on_amd_gpus_only():
    assert reason(H100) == "CK runs on AMD GPUs; this is NVIDIA H100 80GB HBM3 (sm_90a)"
    assert reason(MI300X) is None


def test_the_command_adds_check_timing_inputs_and_kernel_names():
    provider = CkProvider("/opt/ck/tile_example_fmha_fwd", check=2, init="nf", seed=7)
    argv = provider.command(Problem().validate(), QUICK)
    assert argv[0] == "/opt/ck/tile_example_fmha_fwd"
    assert argv[-6:] == ["-v=2", "-warmup=2", "-repeat=20", "-init=nf", "-seed=8", "-kname=1"]


def test_a_check_level_ck_does_not_have_is_a_programming_error():
    with pytest.raises(ValueError):
        CkProvider("/x", check=3)


# ----------------------------------------------------------------------------- the binary
def test_the_binary_comes_from_the_flag_then_the_sweep_then_the_environment(monkeypatch):
    monkeypatch.setenv("FMHA_BENCH_CK_BINARY", "/env/ck")
    assert CkProvider("/flag/ck", "/sweep/ck").binary == "/flag/ck"
    assert CkProvider(None, "/sweep/ck").binary == "/sweep/ck"
    provider = CkProvider()
    assert (provider.binary, provider.origin) == ("/env/ck", "FMHA_BENCH_CK_BINARY")


def test_without_a_binary_ck_is_unavailable_saying_how_to_set_it(monkeypatch):
    monkeypatch.delenv("FMHA_BENCH_CK_BINARY", raising=False)
    provider = CkProvider()
    assert provider.available() == ("no CK binary; set it with --ck-binary PATH, `ck: {binary: PATH}` in the "
                                    "sweep file, or FMHA_BENCH_CK_BINARY")
    assert provider.version() == "" and "binary not set" in provider.describe()
    run = provider.run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason == provider.available()


def test_a_missing_binary_names_the_path_and_where_it_came_from(tmp_path):
    missing = tmp_path / "tile_example_fmha_fwd"
    reason_text = CkProvider(str(missing)).available()
    assert reason_text.startswith(f"{missing}: no such file; it came from --ck-binary; set it with --ck-binary PATH")


def test_a_bare_binary_name_is_looked_up_on_path(tmp_path, monkeypatch):
    tool = printing_tool(tmp_path, "tile_example_fmha_fwd", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    provider = CkProvider("tile_example_fmha_fwd")
    assert provider.binary == str(tool) and provider.available() is None
    assert len(provider.version()) == 12 and str(tool) in provider.describe()


def test_the_sweeps_ck_binary_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "s.yaml"
    path.write_text("ck: {binary: ../ck/bin/tile_example_fmha_fwd}\n")
    assert load_sweep(path).ck_binary == str(tmp_path / "sweeps" / "../ck/bin/tile_example_fmha_fwd")
    path.write_text("ck: {binary: /opt/ck/tile_example_fmha_fwd}\n")
    assert load_sweep(path).ck_binary == "/opt/ck/tile_example_fmha_fwd"


def test_get_providers_resolves_ck_from_the_flag_or_the_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("FMHA_BENCH_CK_BINARY", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text("ck: {binary: bin/ck}\nseed: 4\n")
    sweep = load_sweep(path)
    [ck] = get_providers(["ck"], sweep=sweep)
    assert ck.binary == str(tmp_path / "bin/ck") and ck.seed == 4 and ck.kind == "upstream"
    [flagged] = get_providers(["ck"], sweep=sweep, ck_binary="/flag/ck")
    assert flagged.binary == "/flag/ck" and not flagged.takes_tensors
    with pytest.raises(UserError) as e:
        get_providers(["fmha", "ckk"])
    assert e.value.where == "--providers" and "did you mean 'ck'?" in str(e.value)


# ----------------------------------------------------------------------------- result lines
def test_the_result_line_gives_time_tflops_validity_and_the_kernel():
    reported = parse_ck_output(LINE_OK)
    assert reported.time_s == pytest.approx(0.123e-3)
    assert reported.reported_tflops == pytest.approx(723.45)
    assert reported.valid is True and reported.kernel == KNAME


def test_the_spec_example_line_without_kernel_names_reports_the_bracketed_tag():
    line = ("[fp16|batch|bhsd] b:2, h:8/8, s:3328/3328, d:128/128, scale_s:0.0883883, bias:n, lse:0, qscale:n, "
            "mask:n, v:r, 0.123 ms, 123.45 TFlops, 456.78 GB/s, valid:y")
    reported = parse_ck_output(line)
    assert (reported.time_s, reported.valid, reported.kernel) == (pytest.approx(0.123e-3), True, "fp16|batch|bhsd")


def test_with_validation_off_there_is_no_verdict():
    line = f"{HEAD}, qscale:n, mask:b(-1:0), v:r, {KNAME}, 2.500 ms, 35.60 TFlops, 80.00 GB/s\n"
    reported = parse_ck_output(line)
    assert reported.valid is None and reported.time_s == pytest.approx(2.5e-3)


def test_a_failed_check_is_read_past_what_the_check_wrote_to_stderr():
    output = (f"{HEAD}, qscale:n, mask:n, v:r, {KNAME}, 0.123 ms, 723.45 TFlops, 456.78 GB/s"
              "OUT Error: Incorrect results!\nout[5]: 0.51 != ref[5]: 0.50\nmax err: 0.01, number of errors: 3\n"
              "OUT mismatch found at batch: 0\n\tseqlen_q: 3328\n\tseqlen_k: 3328\n, valid:n\n")
    reported = parse_ck_output(output)
    assert reported.valid is False and reported.time_s == pytest.approx(0.123e-3) and reported.kernel == KNAME


def test_split_kv_and_paged_fields_before_the_time_are_tolerated():
    line = ("[bf16|batch|bhsd] b:64, h:32/8, s:1/8192, d:128/128, scale_s:0.0883883, bias:n, p_drop:0, lse:1, "
            f"qscale:n, mask:b(-1:0), v:r, num_splits:8, page_block_size:128, {SPLIT_KNAME}, {COMBINE_KNAME}, "
            "0.089 ms, 12.07 TFlops, 6043.21 GB/s, valid:y")
    reported = parse_ck_output(line)
    assert reported.time_s == pytest.approx(0.089e-3) and reported.valid is True
    assert reported.kernel == f"{SPLIT_KNAME} + {COMBINE_KNAME}"


def test_group_mode_fp8_and_unknown_fields_are_tolerated():
    line = ("[fp8bf16|group|bhsd] b:3, h:16/4, s:128/256(4096), d:128/128, scale_s:0.0883883, bias:n, p_drop:0, "
            "lse:0, qscale:pt, mask:t(64:0), v:r, rotary_dim:64(inter), q_eff:[128,0,7], cache_batch_idx:1, "
            "1.000 ms, 0.50 TFlops, 1.25 GB/s, valid:y")
    reported = parse_ck_output(line)
    assert reported.time_s == pytest.approx(1e-3) and reported.kernel == "fp8bf16|group|bhsd"


def test_log_lines_before_the_result_line_are_ignored():
    output = ("[LLC Head Grouping] disabled by env\nusing gfx942, 304 CUs\n"
              "[fp16|batch|bhsd] b:1, ignored header from a previous pass\n" + LINE_OK)
    assert parse_ck_output(output).time_s == pytest.approx(0.123e-3)


def test_no_instance_is_a_refusal_without_a_time():
    reported = parse_ck_output(f"{HEAD}, qscale:n, mask:n, v:r, not supported yet\n")
    assert reported.time_s is None and reported.refusal == "CK: not supported yet"


@pytest.mark.parametrize("output", ["", "Segmentation fault\n", "[fp16|batch|bhsd] b:2, h:8/8\n",
                                    f"{HEAD}, -nan ms, inf TFlops, inf GB/s, valid:y\n"])
def test_output_without_a_finite_time_reports_none(output):
    assert parse_ck_output(output).time_s is None


# ----------------------------------------------------------------------------- whole runs
def test_a_run_against_a_fake_ck_reports_its_line(tmp_path):
    seen = tmp_path / "seen"
    tool = write_tool(tmp_path, "tile_example_fmha_fwd", f"""
        import os, sys
        open({str(seen)!r}, "w").write(os.environ["HIP_VISIBLE_DEVICES"] + " " + " ".join(sys.argv[1:]))
        print("some log line")
        print({LINE_OK.strip()!r})
    """)
    provider = CkProvider(str(tool))
    run = provider.run_external(Problem(batch=2, seqlen_q=3328).validate(), MI300X, QUICK)
    assert run.status == "ok" and run.exit_code == 0
    assert run.time_s == pytest.approx(0.123e-3) and run.valid is True and run.kernel == KNAME
    assert run.reported_tflops == pytest.approx(723.45)
    assert run.command == provider.command(Problem(batch=2, seqlen_q=3328).validate(), QUICK)
    assert seen.read_text().startswith("0 -prec=fp16 -mode=0 -b=2 ")


def test_cks_own_failed_check_is_a_mismatch(tmp_path):
    tool = printing_tool(tmp_path, "ck", LINE_OK.replace("valid:y", "valid:n"), exit_code=254)
    run = CkProvider(str(tool)).run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "mismatch" and run.valid is False and run.exit_code == 254


def test_no_ck_instance_fails_with_cks_words_and_exit_code(tmp_path):
    tool = printing_tool(tmp_path, "ck", f"{HEAD}, qscale:n, mask:n, v:r, not supported yet\n", exit_code=254)
    run = CkProvider(str(tool)).run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed"
    assert run.reason.startswith("exit code 254 (= -2) (CK: not supported yet); output tail: ")


def test_a_point_ck_cannot_express_is_skipped_not_run(tmp_path):
    tool = printing_tool(tmp_path, "ck", LINE_OK)
    run = CkProvider(str(tool)).run_external(Problem(sink=True).validate(), MI300X, QUICK)
    assert run.status == "skipped" and run.reason.startswith("learned sink logits") and run.command == []
