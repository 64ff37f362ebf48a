import json
import subprocess
import sys

import pytest

from bnas import genotype as G
from bnas.errors import BnasError


def _doc(**changes):
    base = json.loads((G.package_dir() / "latest_cell.json").read_text())
    base.update(changes)
    return base


def test_shipped_cells_match_the_paper():
    g = G.load("latest_cell_zeroise")
    assert g.kind == "cell" and g.space == "bnas"
    assert g.normal.nodes[0] == (("zeroise", 1), ("bin_dil_conv_3x3", 0))
    assert g.normal.nodes[1] == (("bin_conv_3x3", 1), ("zeroise", 2))
    assert g.reduce.nodes[2] == (("zeroise", 3), ("zeroise", 2))
    assert g.normal.concat == (2, 3, 4, 5)
    imagenet = G.load("latest_cell")
    assert imagenet.reduce.nodes[3] == (("max_pool_3x3", 0), ("bin_dil_conv_3x3", 4))
    assert {"latest_cell", "latest_cell_zeroise"} <= set(G.names())


def test_round_trip_and_user_dir(tmp_path):
    g = G.load("latest_cell")
    g.name = "mine"
    G.save(g, G.user_dir() / "mine.json")
    assert "mine" in G.names()
    again = G.load("mine")
    assert again.normal == g.normal and again.reduce == g.reduce
    path = G.save(g, tmp_path / "x.json")
    assert G.load(str(path)).to_json() == g.to_json()


def test_save_is_atomic_and_never_writes_invalid(tmp_path):
    g = G.load("latest_cell")
    target = tmp_path / "g.json"
    G.save(g, target)
    before = target.read_text()
    bad = G.Genotype(name="bad", kind="cell", space="bnas",
                     normal=G.Cell(((("nope", 0), ("zeroise", 1)),), (2,)), reduce=g.reduce)
    with pytest.raises(BnasError, match="unknown operation 'nope'"):
        G.save(bad, target)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format=7), "unsupported genotype format 7"),
    (lambda d: d["normal"]["nodes"][1].__setitem__(0, ["bin_conv_7x7", 1]),
     r"normal cell node 3, edge 0: unknown operation 'bin_conv_7x7'; did you mean"),
    (lambda d: d["reduce"]["nodes"][0].__setitem__(1, ["max_pool_3x3", 9]),
     r"reduce cell node 2, edge 1: input 9 refers to a node that does not exist"),
    (lambda d: d["normal"]["nodes"][0].__setitem__(0, ["bin_conv_3x3", 3]),
     r"normal cell: cycle through nodes"),
    (lambda d: d["normal"].update(concat=[2, 3, 4]), r"normal cell node 5: dead node"),
    (lambda d: d["normal"].update(concat=[2, 3, 4, 8]), r"output concatenates node 8, which does not exist"),
    (lambda d: d["normal"]["nodes"].__setitem__(0, []), r"node 2: expected a non-empty list"),
    (lambda d: d.update(space="darts"), r"unknown search space 'darts'"),
    (lambda d: d["normal"]["nodes"][0].__setitem__(0, ["skip", 1]), r"'skip' is not in search space 'bnas'"),
    (lambda d: d.update(kind="graph"), r"unknown kind 'graph'"),
])
def test_invalid_genotypes_are_rejected_with_a_precise_message(tmp_path, mutate, message):
    doc = _doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BnasError, match=message):
        G.load(path)


def test_not_json_and_unknown_names(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(BnasError, match="not valid JSON"):
        G.load(path)
    with pytest.raises(BnasError, match="unknown architecture 'latest_cel'; did you mean latest_cell"):
        G.load("latest_cel")
    with pytest.raises(BnasError, match=r"saved with bnas search --genotype-dir DIR: give its "
                                        r"path, DIR/mine\.json\)$"):
        G.load("mine")


def test_skip_space_accepts_skip(tmp_path):
    doc = _doc(space="bnas-skip")
    doc["normal"]["nodes"][0][0] = ["skip", 1]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert G.load(path).normal.nodes[0][0] == ("skip", 1)


def test_genotypes_load_and_validate_without_torch():
    """Genotype parsing and validation (operations, spaces, network families) read torch-free
    registries: a fresh process loads a cell and a fixed genotype without importing torch, and
    still rejects a bad operation and an unknown family keyword."""
    code = ("import sys, bnas.genotype as G\n"
            "from bnas.errors import BnasError\n"
            "assert 'latest_cell' in G.names()\n"
            "cell, fixed = G.load('latest_cell'), G.load('resnet20_1w1a')\n"
            "for doc in ({**cell.to_json(), 'normal': {'nodes': [[['conv', 0]]], 'concat': [2]}},\n"
            "            {**fixed.to_json(), 'network': {'cifar': {'family': 'resnet', 'x': 1}}}):\n"
            "    try:\n"
            "        G.from_json(doc)\n"
            "    except BnasError as exc:\n"
            "        print(exc)\n"
            "print(cell.space, fixed.kind, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert "unknown operation 'conv'" in lines[0] and "has no keyword 'x'" in lines[1]
    assert lines[2] == "bnas fixed False"
