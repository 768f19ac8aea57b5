"""models/parse.py: row checks and channel bookkeeping of the YAML builder; every error names its row."""

from __future__ import annotations

import pytest

from models.parse import make_divisible, row_lines
from models.yolo import Model

TINY = {
    "nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
    "anchors": [[8, 8, 16, 16], [32, 32, 64, 64]],
    "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 2, "C3", [16]],
                 [-1, 1, "Conv", [32, 3, 2]]],
    "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 2], 1, "Concat", [1]],
             [-1, 1, "Conv", [16, 1, 1]], [[6, 3], 1, "Detect", ["nc", "anchors"]]],
}


def tiny(**changes) -> dict:
    return {**TINY, **changes}


def test_make_divisible():
    assert make_divisible(1) == 8 and make_divisible(16) == 16 and make_divisible(17) == 24


def test_tiny_graph_channels_and_saved_outputs():
    model = Model(TINY)
    assert [spec.args[:2] for spec in model.layer_table[:4]] == [[3, 8], [8, 16], [16, 16], [16, 32]]
    assert model.layer_table[2].args[2] == 2  # C3 takes the repeat count itself
    assert model.save == {2, 3, 6}
    assert model.stride.tolist() == [4.0, 8.0]


def test_width_and_depth_multiples():
    model = Model(tiny(width_multiple=0.5, depth_multiple=0.33, backbone=TINY["backbone"][:2]
                       + [[-1, 3, "C3", [16]], TINY["backbone"][3]]))
    assert model.layer_table[0].args[1] == 8  # 8 * 0.5 = 4, rounded up to 8
    assert model.layer_table[2].args[2] == 1  # 3 * 0.33 -> 1


@pytest.mark.parametrize("row, message", [
    ([-1, 1, "Conv2", [8]], "unknown module 'Conv2'"),
    ([7, 1, "Conv", [8]], "'from' index 7"),
    ([-1, 1, "Conv", [8, 3, 2, None, 1, 1, True, "extra"]], "wrong arguments"),
    ([-1, 0, "Conv", [8]], "'number'"),
    ([-1, 1, "Conv"], r"\[from, number, module, args\]"),
    ([-1, 1, "Conv", []], "output channels"),
])
def test_bad_rows_name_the_row(row, message):
    backbone = TINY["backbone"][:2] + [row] + TINY["backbone"][3:]
    with pytest.raises(ValueError, match=message) as err:
        Model(tiny(backbone=backbone))
    assert "layer 2" in str(err.value)


def test_detect_must_be_last():
    with pytest.raises(ValueError, match="Detect must be the last row"):
        Model(tiny(head=TINY["head"] + [[-1, 1, "Conv", [8, 1, 1]]]))


def test_errors_from_a_file_name_the_line(tmp_path):
    text = ("nc: 2\nanchors: [[8, 8], [16, 16]]\nbackbone:\n  [[-1, 1, Conv, [8, 3, 2]],\n"
            "   [-1, 1, Conv, [16, 3, 2]],\n   [-1, 1, Nope, [16]]]\nhead:\n  [[[1, 2], 1, Detect, [nc, anchors]]]\n")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert row_lines(text) == [4, 5, 6, 8]
    with pytest.raises(ValueError, match=r"broken.yaml line 6: layer 2 .*unknown module 'Nope'"):
        Model(path)


def test_missing_file_and_bad_nc(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Model(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="'nc'"):
        Model(tiny(nc=0))


def test_cross_layer_attention_rows():
    head = [[[-1, 1], 1, "CrossLayerAttention", [2]], [[2, 4], 1, "Detect", ["nc", "anchors"]]]
    backbone = TINY["backbone"][:3] + [[-1, 1, "Conv", [16, 3, 2]]]
    model = Model(tiny(backbone=backbone, head=head))
    assert model.layer_table[4].args == [16, 16, 2]  # (c_coarse, c_fine, window)
    with pytest.raises(ValueError, match=r"\[coarse, fine\]"):
        Model(tiny(backbone=backbone, head=[[-1, 1, "CrossLayerAttention", [2]]] + head[1:]))
