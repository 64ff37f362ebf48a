"""``bnas list`` and ``bnas show``, run in-process (and once through the console script)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bnas
from bnas import binarize, profiling
from bnas.cli import main
from bnas.errors import BnasError
from bnas.genotype import names as genotype_names
from bnas.model import CONFIGS
from bnas.ops import OPS, SPACES


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
    return err


# -- list ---------------------------------------------------------------------------------------
def test_list_everything(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for header in ("architectures:", "configs:", "spaces:", "ops:", "binarizers:", "datasets:"):
        assert header in out.splitlines()
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    expected = (set(genotype_names()) | set(CONFIGS.names()) | set(SPACES.names())
                | set(OPS.names()) | set(binarize.names()) | {"cifar10", "imagenet"})
    assert expected <= names


def test_list_binarizers_with_hparams_and_paper(capsys):
    code, out, _ = run(capsys, "list", "binarizers")
    assert code == 0 and out.startswith("binarizers:\n")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert sorted(rows) == binarize.names()
    for name, cls in binarize.BINARIZERS.items():
        assert cls.paper in rows[name]
        for key, value in cls.hparams.items():
            assert f"{key}={value}" in rows[name]


def test_list_patterns_like_timm(capsys):
    code, out, _ = run(capsys, "list", "ops", "bin_*", "--exclude", "*5x5")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["bin_conv_3x3", "bin_dil_conv_3x3"]
    code, out, _ = run(capsys, "list", "bnas*", "--json")      # no category: every one searched
    found = json.loads(out)
    assert {k: [r["name"] for r in rows] for k, rows in found.items() if rows} == {
        "configs": CONFIGS.names(), "spaces": ["bnas", "bnas-skip"]}
    code, out, _ = run(capsys, "list", "archs", "*_zeroise")   # aliases of a category work
    assert code == 0 and "latest_cell_zeroise" in out and "resnet" not in out


def test_list_json(capsys):
    code, out, _ = run(capsys, "list", "configs", "--json")
    data = json.loads(out)
    assert list(data) == ["configs"]
    a = next(r for r in data["configs"] if r["name"] == "bnas-a")
    assert (a["arch"], a["dataset"], a["layers"], a["init_channels"]) == (
        "latest_cell_zeroise", "cifar10", 20, 36)


def test_list_typos(capsys):
    err = one_line_error(*run(capsys, "list", "binarizrs"))
    assert "did you mean binarizers" in err
    err = one_line_error(*run(capsys, "list", "binarizers", "reccu"))
    assert "unknown binarizer 'reccu'; did you mean recu" in err


def test_list_survives_a_broken_user_genotype(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BNAS_GENOTYPE_DIR", str(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    code, out, _ = run(capsys, "list", "architectures", "--json")
    rows = {r["name"]: r for r in json.loads(out)["architectures"]}
    assert code == 0 and rows["broken"]["kind"] == "invalid" and "latest_cell" in rows


# -- show ---------------------------------------------------------------------------------------
def test_show_bnas_a_json(capsys):
    code, out, _ = run(capsys, "show", "bnas-a", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["architecture"], data["configuration"], data["dataset"], data["cells"]) == (
        "latest_cell_zeroise", "bnas-a", "cifar10", 20)
    assert data["params"] == 5_578_252
    assert data["params"] == data["binary_params"] + data["real_params"]
    assert data["ops"] == data["flops"] + data["bops"] / 64
    assert data["size_bytes"] == data["binary_params"] / 8 + data["real_params"] * 4
    assert data["output_shape"] == [10] and data["binarizer"] == {"name": "plain"}
    assert data["flops"] == sum(l["macs"] for l in data["layers"] if not l["binary"])


def test_show_text_matches_the_library(capsys):
    argv = ["latest_cell", "--dataset", "cifar100", "--layers", "3", "--init-channels", "8"]
    code, out, _ = run(capsys, "show", *argv)
    expected = bnas.profile(bnas.build_model("latest_cell", dataset="cifar100", layers=3,
                                             init_channels=8))
    assert code == 0
    header, summary, table = out.rstrip("\n").split("\n\n")
    assert header == "latest_cell: cell genotype, dataset cifar100, 3 cells, binarizer plain"
    assert summary == expected.summary() and table == expected.table()
    assert f"{expected.params:,}" in summary and "output      100" in summary


def test_show_genotype_file_and_binarizer_hparams(capsys):
    path = str(Path(bnas.__file__).parent / "genotypes" / "latest_cell_zeroise.json")
    code, out, _ = run(capsys, "show", path, "--layers", "2", "--init-channels", "4", "--no-table",
                       "--binarizer", "rbnn", "--binarizer-hparam", "a32=true")
    assert code == 0 and "layer" not in out
    assert "binarizer rbnn (" in out and "a32=True" in out
    assert "BOPs        0 (binary" in out                 # 1-bit weights on real inputs


def test_show_several_side_by_side(capsys):
    names = ["latest_cell", "latest_cell_zeroise", "resnet20_1w1a"]
    code, out, _ = run(capsys, "show", *names, "--dataset", "cifar100")
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split() == names and set(lines[1]) == {"-", " "}
    rows = {line[:18].strip(): line[18:].split("  ") for line in lines[2:]}
    for col, name in enumerate(names):
        p = bnas.profile(bnas.build_model(name, dataset="cifar100"))
        cells = [cell.strip() for cell in rows["parameters"] if cell.strip()]
        assert cells[col] == f"{p.params:,}"
        assert [c.strip() for c in rows["BOPs"] if c.strip()][col] == profiling.si(p.bops)
    assert "latency, packed" not in rows  # only with --latency
    code, out, _ = run(capsys, "show", *names, "--dataset", "cifar100", "--json")
    data = json.loads(out)
    assert not any("latency_s" in d for d in data)
    assert [d["name"] for d in data] == names and data[2]["kind"] == "fixed"
    assert data[0]["ops"] == bnas.profile(bnas.build_model("latest_cell", dataset="cifar100")).ops
    one_line_error(*run(capsys, "show", "latest_cell", "nonesuch"))


def test_show_latency_through_the_packed_engine(capsys, monkeypatch):
    """--latency times each network (cells at the given size, fixed ones at theirs); without
    a usable engine it is one line, exit 2."""
    from bnas.search.latency import engine

    names = ["latest_cell", "resnet20_1w1a"]
    size = ["--dataset", "digits", "--layers", "3", "--init-channels", "8", "--latency"]
    try:
        engine()
    except BnasError:
        one_line_error(*run(capsys, "show", *names, *size))
        return
    code, out, _ = run(capsys, "show", *names, *size)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("latency, packed"))
    times = [float(c.replace(",", "")) for c in row.split()[2::2]]
    assert len(times) == 2 and all(t > 0 for t in times) and row.count(" ms") == 2
    code, out, _ = run(capsys, "show", *names, *size, "--json")
    data = json.loads(out)
    assert [d["cells"] for d in data] == [3, None] and all(d["latency_s"] > 0 for d in data)

    import bnas.deploy.kernels

    def unavailable():
        raise BnasError("the packed engine's kernels are off (no C++ compiler)")

    monkeypatch.setattr(bnas.deploy.kernels, "kernels", unavailable)
    err = one_line_error(*run(capsys, "show", *names, *size))
    assert "needs the packed engine" in err


def test_show_bad_input(capsys):
    err = one_line_error(*run(capsys, "show", "latest_cel"))
    assert "did you mean latest_cell" in err
    err = one_line_error(*run(capsys, "show", "bnas-a", "--layers", "-1"))
    assert "--layers must be a positive integer" in err
    err = one_line_error(*run(capsys, "show", "bnas-a", "--config", "bnas-d"))
    assert "contradicts" in err
    err = one_line_error(*run(capsys, "show", "latest_cell", "--dataset", "cifar11"))
    assert "did you mean cifar10" in err
    err = one_line_error(*run(capsys, "show", "latest_cell", "--binarizer", "recuu"))
    assert "did you mean recu" in err
    err = one_line_error(*run(capsys, "show", "missing/genotype.json"))
    assert "not found" in err
    with pytest.raises(SystemExit) as exc:
        main(["show", "latest_cell", "--binarizer-hparam", "novalue"])
    assert exc.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_console_script_exit_status():
    script = Path(sys.executable).with_name("bnas")
    if not script.exists():
        pytest.skip("the bnas console script is not installed next to this Python")
    bad = subprocess.run([str(script), "show", "bnas-z"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("bnas show: error: unknown architecture or configuration 'bnas-z'")
