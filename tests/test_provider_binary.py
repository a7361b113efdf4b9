"""`binary:NAME`: the sweep file's `binaries:` declarations (schema and FILE:LINE errors), argv
templates, regex parsing, and whole runs against fake programs."""
import textwrap

import pytest

from fake_tools import MI300X, QUICK, printing_tool, write_tool
from fmha_bench.binary_spec import PLACEHOLDERS, placeholder_values, render
from fmha_bench.errors import UserError
from fmha_bench.problem import Problem
from fmha_bench.providers import all_providers, get_providers
from fmha_bench.providers.binary import BinaryProvider
from fmha_bench.sweep import load_sweep


@pytest.fixture
def sweep_file(tmp_path):
    def write(text: str):
        path = tmp_path / "s.yaml"
        path.write_text(textwrap.dedent(text))
        return path
    return write


def declare(sweep_file, body: str, name: str = "my_fa"):
    """A sweep with one binary declaration (body indented under its name)."""
    return load_sweep(sweep_file(f"binaries:\n  {name}:\n" + textwrap.indent(textwrap.dedent(body), "    ")))


def load_error(path) -> UserError:
    with pytest.raises(UserError) as e:
        load_sweep(path)
    return e.value


def provider_for(tmp_path, tool_output: str, exit_code: int = 0, extra: str = "") -> BinaryProvider:
    """A provider for a fake program (next to the sweep) that prints `tool_output`."""
    printing_tool(tmp_path, "tool", tool_output, exit_code)
    path = tmp_path / "s.yaml"
    path.write_text("binaries:\n  fake:\n    command: [./tool]\n    time: 'time: (\\S+) ms'\n"
                    "    valid: 'check: (\\w+)'\n    tflops: '(\\S+) TFLOPS'\n    kernel: 'kernel: (\\S+)'\n" + extra)
    return BinaryProvider(load_sweep(path).binaries["fake"])


# ----------------------------------------------------------------------------- schema
def test_a_full_declaration_loads_with_paths_relative_to_the_sweep_file(sweep_file, tmp_path):
    spec = declare(sweep_file, """
        command: [./fa_bench, "--b={batch}", "--s={seqlens_q}"]
        time: 'time: ([0-9.]+) us'
        time_unit: us
        valid: 'check: (\\w+)'
        valid_values: [ok, true, 1]
        tflops: '([0-9.]+) TFLOPS'
        kernel: 'kernel: (\\S+)'
        exit_codes: [0, 3]
        timeout_s: 60
        supports: {dtype: [fp16, bf16], mask: causal}
        cwd: build
        description: my FlashAttention build
    """).binaries["my_fa"]
    assert spec.command == ("./fa_bench", "--b={batch}", "--s={seqlens_q}")
    assert spec.time.pattern == "time: ([0-9.]+) us" and spec.time_unit == "us"
    assert spec.valid_values == ("ok", "true", "1")  # YAML's true and 1 are read back as words
    assert spec.exit_codes == (0, 3) and spec.timeout_s == 60.0
    assert spec.supports == (("dtype", ("fp16", "bf16")), ("mask", ("b",)))
    assert spec.cwd == str(tmp_path / "build") and spec.base_dir == str(tmp_path)
    assert spec.description == "my FlashAttention build" and spec.where == f"{tmp_path / 's.yaml'}:2"


def test_only_command_and_time_are_required(sweep_file):
    spec = declare(sweep_file, "command: [fa]\ntime: 't=(\\S+)'\n").binaries["my_fa"]
    assert (spec.time_unit, spec.valid, spec.tflops, spec.kernel) == ("ms", None, None, None)
    assert spec.valid_values == ("y", "yes", "pass", "true", "1")
    assert (spec.exit_codes, spec.timeout_s, spec.supports, spec.cwd) == ((0,), 600.0, (), None)


@pytest.mark.parametrize("body, line, message", [
    ("command: [fa]\ntime: 't=(\\S+)'\ntimout_s: 5\n", 5, "binaries: my_fa: unknown key 'timout_s'; did you mean 'timeout_s'?"),
    ("time: 't=(\\S+)'\n", 2, "binaries: my_fa: missing command"),
    ("command: [fa]\n", 2, "binaries: my_fa: missing time"),
    ("command: []\ntime: 't=(\\S+)'\n", 3, "binaries: my_fa: command: the list is empty"),
    ("command: fa --b=1\ntime: 't=(\\S+)'\n", 3, "binaries: my_fa: command: expected an argv list"),
    ("command: [fa, 5]\ntime: 't=(\\S+)'\n", 3, "binaries: my_fa: command[1]: expected a string, got 5 (quote it)"),
    ("command: [fa, '--b={bach}']\ntime: 't=(\\S+)'\n", 3,
     "binaries: my_fa: command[1]: unknown placeholder {bach}; did you mean 'batch'?"),
    ("command:\n  - fa\n  - '--x={nonsense_name_here}'\ntime: 't=(\\S+)'\n", 5,
     "command[1]: unknown placeholder {nonsense_name_here} (placeholders: family, mode,"),
    ("command: [fa, '--b={batch']\ntime: 't=(\\S+)'\n", 3, "command[1]: "),
    ("command: [fa, '--b={seqlen_q[0]}']\ntime: 't=(\\S+)'\n", 3, "only plain names, no attributes or indexes"),
    ("command: [fa, '{}']\ntime: 't=(\\S+)'\n", 3, "positional fields"),
    ("command: [fa, '--b={batch:.3q}']\ntime: 't=(\\S+)'\n", 3, "command[1]: Unknown format code 'q'"),
    ("command: [fa]\ntime: 't=([0-9.]+'\n", 4, "binaries: my_fa: time: bad regular expression: missing )"),
    ("command: [fa]\ntime: 't=[0-9.]+'\n", 4, "time: the regular expression needs a group"),
    ("command: [fa]\ntime: 't=(\\S+)'\nvalid: '(['\n", 5, "valid: bad regular expression"),
    ("command: [fa]\ntime: 't=(\\S+)'\ntime_unit: min\n", 5, "time_unit: unknown unit 'min'; one of s, ms, us, ns"),
    ("command: [fa]\ntime: 't=(\\S+)'\ntimeout_s: 0\n", 5, "timeout_s: must be > 0, got 0"),
    ("command: [fa]\ntime: 't=(\\S+)'\nexit_codes: [0, x]\n", 5, "exit_codes[1]: expected an integer, got 'x'"),
    ("command: [fa]\ntime: 't=(\\S+)'\nexit_codes: []\n", 5, "exit_codes: the list is empty"),
    ("command: [fa]\ntime: 't=(\\S+)'\nvalid_values: []\n", 5, "valid_values: the list is empty"),
    ("command: [fa]\ntime: 't=(\\S+)'\nsupports: {dtyp: fp16}\n", 5,
     "binaries: my_fa: supports: unknown problem field 'dtyp'; did you mean 'dtype'?"),
    ("command: [fa]\ntime: 't=(\\S+)'\nsupports: {dtype: fp17}\n", 5, "supports: dtype: unknown value 'fp17'"),
])
def test_a_bad_declaration_is_an_error_at_its_file_and_line(sweep_file, body, line, message):
    path = sweep_file("binaries:\n  my_fa:\n" + textwrap.indent(body, "    "))
    error = load_error(path)
    assert error.where == f"{path}:{line}"
    assert message in str(error)


def test_a_bad_name_or_a_non_mapping_is_an_error_at_its_line(sweep_file):
    path = sweep_file("name: x\nbinaries:\n  'my fa': {command: [fa], time: 't=(\\S+)'}\n")
    error = load_error(path)
    assert error.where == f"{path}:3" and "a name is letters, digits" in str(error)
    path = sweep_file("binaries:\n  fa: [fa]\n")
    error = load_error(path)
    assert error.where == f"{path}:2" and "expected a mapping with command: [...] and time: REGEX" in str(error)
    path = sweep_file("binaries: [fa]\n")
    assert load_error(path).where == f"{path}:1"


# ----------------------------------------------------------------------------- templates
def test_placeholders_cover_every_problem_field_plus_the_derived_values():
    problem = Problem(mode="group", batch=3, seqlen_q=[5, 0, 7], seqlen_k=[9, 4, 7], mask="b:16,0,2",
                      lse=True, nhead_q=8, nhead_k=2).validate()
    values = placeholder_values(problem, warmup=3, repeat=20, seed=5)
    assert set(values) == set(PLACEHOLDERS)
    assert (values["seqlen_q"], values["seqlens_k"], values["total_q"], values["max_seqlen_k"]) == ("5,0,7", "9,4,7", 12, 9)
    assert (values["group"], values["causal"], values["lse"], values["sink"]) == (1, 0, 1, 0)
    assert (values["mask"], values["mask_align"], values["window_left"], values["window_right"], values["mask_sink"]) \
        == ("b:16,0,2", "bottom_right", 16, 0, 2)
    assert values["scale"] == pytest.approx(128 ** -0.5)
    assert (values["warmup"], values["repeat"], values["seed"]) == (3, 20, 5)


def test_batch_mode_lists_one_length_per_sequence_and_causal_is_one():
    values = placeholder_values(Problem(batch=2, seqlen_q=64, mask="causal").validate(), warmup=0, repeat=1, seed=0)
    assert (values["seqlen_q"], values["seqlens_q"], values["group"], values["causal"]) == (64, "64,64", 0, 1)


def test_each_argv_element_is_formatted_on_its_own_with_format_specs_and_escapes():
    values = placeholder_values(Problem(batch=4, scale=0.125).validate(), warmup=1, repeat=20, seed=0)
    argv = render(["fa", "--b={batch}", "--scale={scale:.4f}", "{{literal}}", "a b {dtype}"], values)
    assert argv == ["fa", "--b=4", "--scale=0.1250", "{literal}", "a b fp16"]


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("unit, factor", [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)])
def test_the_time_is_converted_from_the_declared_unit(tmp_path, unit, factor):
    provider = provider_for(tmp_path, "", extra=f"    time_unit: {unit}\n")
    assert provider.parse("time: 2.5 ms\n").time_s == pytest.approx(2.5 * factor)


def test_the_last_match_of_each_regex_wins_and_verdicts_are_case_insensitive(tmp_path):
    provider = provider_for(tmp_path, "")
    reported = provider.parse("time: 9 ms (warmup)\ncheck: FAIL\ntime: 1.5 ms\n3.5 TFLOPS\nkernel: fa_v2\ncheck: Pass\n")
    assert reported.time_s == pytest.approx(1.5e-3) and reported.valid is True
    assert reported.reported_tflops == 3.5 and reported.kernel == "fa_v2"
    assert provider.parse("time: 1 ms\ncheck: mismatch\n").valid is False
    assert provider.parse("time: 1 ms\n").valid is None


# ----------------------------------------------------------------------------- whole runs
def test_a_good_run_is_ok(tmp_path):
    provider = provider_for(tmp_path, "time: 0.25 ms\ncheck: pass\n12.5 TFLOPS\nkernel: fa_fwd_d128\n")
    run = provider.run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "ok" and run.time_s == pytest.approx(0.25e-3) and run.valid is True
    assert run.reported_tflops == 12.5 and run.kernel == "fa_fwd_d128" and run.command == [str(tmp_path / "tool")]


def test_the_tools_own_check_failing_is_a_mismatch(tmp_path):
    run = provider_for(tmp_path, "time: 0.25 ms\ncheck: fail\n").run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "mismatch" and run.valid is False


def test_exit_codes_follow_the_declaration(tmp_path):
    run = provider_for(tmp_path, "time: 1 ms\n", exit_code=3).run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason.startswith("exit code 3;")
    provider = provider_for(tmp_path, "time: 1 ms\n", exit_code=3, extra="    exit_codes: [0, 3]\n")
    assert provider.run_external(Problem().validate(), MI300X, QUICK).status == "ok"


def test_garbage_output_fails_with_no_result_line(tmp_path):
    run = provider_for(tmp_path, "hello\n").run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason == "no result line in output: hello"


def test_the_rendered_argv_runs_in_the_declared_cwd(tmp_path):
    (tmp_path / "work").mkdir()
    seen = tmp_path / "work" / "argv"
    write_tool(tmp_path, "tool", """
        import sys
        open("argv", "w").write(" ".join(sys.argv[1:]))
        print("time: 1 ms")
    """)
    path = tmp_path / "s.yaml"
    path.write_text("binaries:\n  fa:\n    command: [tool, '--b={batch}', '--s={seqlens_q}', '--causal={causal}', "
                    "'--repeat={repeat}']\n    time: 'time: (\\S+) ms'\n    cwd: work\n")
    provider = get_providers(["binary:fa"], sweep=load_sweep(path))[0]
    problem = Problem(mode="group", batch=2, seqlen_q=[3, 5], mask="b").validate()
    assert provider.run_external(problem, MI300X, QUICK).status == "ok"
    assert seen.read_text() == "--b=2 --s=3,5 --causal=1 --repeat=20"


def test_a_missing_cwd_fails_naming_it(tmp_path):
    provider = provider_for(tmp_path, "time: 1 ms\n", extra="    cwd: nowhere\n")
    run = provider.run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason.startswith(f"cwd {tmp_path / 'nowhere'}: no such directory")


def test_a_missing_or_unrunnable_program_says_which_declaration_to_fix(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("binaries:\n  fa:\n    command: [./not_built]\n    time: 't=(\\S+)'\n")
    provider = BinaryProvider(load_sweep(path).binaries["fa"])
    assert provider.available() == (f"./not_built: no such file; fix command[0] of binaries: fa ({path}:2); "
                                    f"a relative path is looked for in {tmp_path}, then on PATH")
    run = provider.run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason == provider.available()
    tool = printing_tool(tmp_path, "not_built", "t=1")
    tool.chmod(0o644)
    assert "is not executable" in provider.available()


def test_a_template_that_does_not_fit_a_points_value_fails_that_point(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("binaries:\n  fa:\n    command: [fa, '--s={seqlen_q:d}']\n    time: 't=(\\S+)'\n")
    provider = BinaryProvider(load_sweep(path).binaries["fa"])
    run = provider.run_external(Problem(mode="group", batch=2, seqlen_q=[1, 2]).validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason.startswith(f"command template ({path}:2): ")


def test_the_supports_filter_skips_other_points_saying_why(sweep_file):
    spec = declare(sweep_file, "command: [fa]\ntime: 't=(\\S+)'\nsupports: {dtype: [fp16, bf16], mask: causal}\n"
                   ).binaries["my_fa"]
    provider = BinaryProvider(spec)
    assert provider.supports(Problem(mask="b").validate(), MI300X) is None
    assert provider.supports(Problem(dtype="fp8_e4m3fn", mask="b").validate(), MI300X) == \
        "binary:my_fa supports dtype fp16, bf16 only (this point: fp8_e4m3fn)"
    assert provider.supports(Problem(mask="t").validate(), MI300X) == "binary:my_fa supports mask b only (this point: t)"


def test_the_version_follows_the_programs_bytes_and_the_template(tmp_path):
    printing_tool(tmp_path, "tool", "build 1")
    path = tmp_path / "s.yaml"
    path.write_text("binaries:\n  a: {command: [./tool, x], time: 't=(\\S+)'}\n  b: {command: [./tool, y], time: 't=(\\S+)'}\n")
    sweep = load_sweep(path)
    a, b = BinaryProvider(sweep.binaries["a"]), BinaryProvider(sweep.binaries["b"])
    first = a.version()
    assert len(first) == 12 and first != b.version()
    printing_tool(tmp_path, "tool", "build 2, longer")
    assert a.version() != first


def test_declared_binaries_are_providers_of_the_sweep(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("seed: 3\nbinaries:\n  fa: {command: [fa], time: 't=(\\S+)', description: my FA}\n")
    sweep = load_sweep(path)
    names = [p.name for p in all_providers(sweep)]
    assert names[-1] == "binary:fa" and "binary:fa" not in [p.name for p in all_providers()]
    [provider] = get_providers(["binary:fa"], sweep=sweep)
    assert provider.kind == "upstream" and not provider.takes_tensors and provider.seed == 3
    assert provider.describe() == f"my FA: fa (declared at {path}:3)"
    with pytest.raises(UserError) as e:
        get_providers(["binary:nope"], sweep=sweep)
    assert e.value.where == "--providers"
    assert "binary:NAME providers are declared in the sweep file's binaries: section" in str(e.value)
