"""bnas.viz and ``bnas draw``: real graphviz renderings, checked file by file."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest

from bnas import genotype
from bnas.cli import main
from bnas.errors import BnasError
from bnas.genotype import Cell, Genotype
from bnas.viz import render_genotype

pytestmark = pytest.mark.skipif(shutil.which("dot") is None,
                                reason="graphviz's dot is not installed")

SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def svg_texts(path: Path) -> list[str]:
    return [t.text for t in ET.parse(path).getroot().iter(f"{SVG}text") if t.text]


def edges(path: Path) -> list[ET.Element]:
    return [g for g in ET.parse(path).getroot().iter(f"{SVG}g") if g.get("class") == "edge"]


def test_cells_as_svg_name_every_operation(tmp_path):
    g = genotype.load("latest_cell_zeroise")
    paths = render_genotype(g, tmp_path, "svg")
    assert paths == [tmp_path / "latest_cell_zeroise_normal.svg",
                     tmp_path / "latest_cell_zeroise_reduce.svg"]
    for path, cell in zip(paths, (g.normal, g.reduce)):
        texts = svg_texts(path)
        for name in ("c_{k-2}", "c_{k-1}", "c_{k}", *(str(n) for n in range(2, 6))):
            assert name in texts
        ops = [op for _, op, _ in cell.edges]
        assert sorted(t for t in texts if t in set(ops)) == sorted(ops)   # one label per edge
        # zeroise edges are dashed red, and only they are red
        red = [e for e in edges(path)
               if any(p.get("stroke") == "red" for p in e.iter(f"{SVG}path"))]
        assert len(red) == ops.count("zeroise") > 0
        for e in red:
            assert e.find(f"{SVG}path").get("stroke-dasharray")
            assert [t.text for t in e.iter(f"{SVG}text")] == ["zeroise"]
    # the dot sources are cleaned up
    assert not list(tmp_path.glob("*.gv")) and not list(tmp_path.glob("*_normal"))


def test_png_and_pdf_files(tmp_path):
    (normal, reduce) = render_genotype("latest_cell", tmp_path / "new" / "dir", "png")
    for path in (normal, reduce):
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    (pdf, _) = render_genotype("latest_cell", tmp_path, "pdf")
    assert pdf.name == "latest_cell_normal.pdf" and pdf.read_bytes().startswith(b"%PDF")


def test_genotype_from_a_file_with_skip(tmp_path):
    cell = Cell(nodes=((("skip", 0), ("bin_conv_5x5", 1)), (("avg_pool_3x3", 2), ("skip", 1))),
                concat=(2, 3))
    path = genotype.save(Genotype(name="mine", space="bnas-skip", normal=cell, reduce=cell),
                         tmp_path / "mine.json")
    normal, _ = render_genotype(path, tmp_path, "svg")
    texts = svg_texts(normal)
    assert texts.count("skip") == 2 and {"bin_conv_5x5", "avg_pool_3x3"} <= set(texts)
    assert "4" not in texts                                 # only the nodes the cell has


@pytest.mark.skipif("resnet20_1w1a" not in genotype.names(), reason="no resnet20_1w1a genotype")
def test_fixed_genotype_block_structure(tmp_path):
    (path,) = render_genotype("resnet20_1w1a", tmp_path, "svg")
    assert path.name == "resnet20_1w1a_cifar.svg"
    texts = svg_texts(path)
    blocks = [t for t in texts if t.endswith(": BasicBlock")]
    assert len(blocks) == 9                                 # 3 stages x 3 basic blocks
    assert texts.count("bin conv 3x3 16->16") == 6          # stage 1: six binary convolutions
    assert "bin conv 3x3/2 16->32" in texts and "linear 64->10" in texts
    assert "conv 3x3 3->16" in texts                        # the real-valued stem


def test_bad_requests(tmp_path, monkeypatch):
    with pytest.raises(BnasError, match="format"):
        render_genotype("latest_cell", tmp_path, "jpg")
    (tmp_path / "file").write_text("")
    with pytest.raises(BnasError, match="is a file"):
        render_genotype("latest_cell", tmp_path / "file", "svg")
    with pytest.raises(BnasError, match="cannot create output directory .*file/below"):
        render_genotype("latest_cell", tmp_path / "file" / "below", "svg")
    with pytest.raises(BnasError, match="did you mean latest_cell"):
        render_genotype("latest_cel", tmp_path, "svg")
    with monkeypatch.context() as m:  # a read-only directory (root writes anyway)
        m.setattr(graphviz.Digraph, "render", _raise(PermissionError(13, "Permission denied")))
        with pytest.raises(BnasError, match="cannot write .*latest_cell_normal.svg: Permission denied"):
            render_genotype("latest_cell", tmp_path, "svg")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BnasError, match="dot"):
        render_genotype("latest_cell", tmp_path, "svg")


def test_cli_draw(tmp_path, capsys):
    assert main(["draw", "bnas-a", "--format", "png", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "latest_cell_zeroise_normal.png"),
                   str(tmp_path / "latest_cell_zeroise_reduce.png")]
    assert all(Path(p).read_bytes().startswith(PNG_SIGNATURE) for p in out)


def test_cli_draw_errors(tmp_path, capsys):
    assert main(["draw", "bnas_aa", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean" in err and "bnas-a" in err, err
    with pytest.raises(SystemExit) as exc:
        main(["draw", "bnas-a", "--format", "gif"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _raise(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail
