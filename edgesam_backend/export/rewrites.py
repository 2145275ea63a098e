"""Exact graph rewrites applied before int8 quantization (onnx only): erf-GELU fusion and spatial
means → global average pooling (see :mod:`.int8` for why)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper


def _constant_values(model: onnx.ModelProto) -> dict[str, NDArray[Any]]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace exact (erf) GELU subgraphs ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)`` by
    onnxruntime's ``com.microsoft.Gelu`` in place; returns how many were fused.

    onnxruntime fuses these itself at its extended optimisation level, but not once the graph is
    wrapped in QDQ nodes: the int8 encoder then runs five unfused elementwise ops per GELU (~30 % of
    its time on a 2-core CPU). Fusing before quantization keeps one ``Gelu`` kernel between the
    ``DequantizeLinear`` and ``QuantizeLinear`` around it. The function is the same (erf GELU).
    """
    consts = _constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}

    def const(name: str, value: float) -> bool:
        v = consts.get(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - value) < 1e-4

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if tensor in graph_outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def other(node: onnx.NodeProto, tensor: str) -> str | None:
        if len(node.input) != 2 or tensor not in node.input:
            return None
        return node.input[1] if node.input[0] == tensor else node.input[0]

    replace: dict[int, onnx.NodeProto] = {}  # id(first node) → Gelu
    drop: set[int] = set()
    for erf in model.graph.node:
        if erf.op_type != "Erf":
            continue
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not const(div.input[1], float(np.sqrt(2.0))):
            continue
        x = div.input[0]
        if only_consumer(div.output[0], "Erf") is None:
            continue
        add = only_consumer(erf.output[0], "Add")
        one = other(add, erf.output[0]) if add is not None else None
        if add is None or one is None or not const(one, 1.0):
            continue
        mul = only_consumer(add.output[0], "Mul")
        if mul is None or other(mul, add.output[0]) != x:
            continue
        half_mul = only_consumer(mul.output[0], "Mul")
        half = other(half_mul, mul.output[0]) if half_mul is not None else None
        if half_mul is None or half is None or not const(half, 0.5):
            continue
        name = div.name.rsplit("/", 1)[0] + "/Gelu" if "/" in div.name else f"{div.name}_Gelu"
        gelu = onnx.helper.make_node("Gelu", [x], [half_mul.output[0]], name=name, domain="com.microsoft")
        replace[id(div)] = gelu
        drop.update(id(n) for n in (erf, add, mul, half_mul))
    if not replace:
        return 0
    nodes = []
    for n in model.graph.node:
        if id(n) in replace:
            nodes.append(replace[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    used = {i for n in nodes for i in n.input} | graph_outputs
    nodes = [n for n in nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replace)


def spatial_means_to_pooling(model: onnx.ModelProto) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` on 4-D tensors (the squeeze-excite means) as
    the equivalent ``GlobalAveragePool`` in place; returns how many. onnxruntime runs the pooling
    in its blocked (NCHWc) layout, the reduction not, which matters once the surrounding convs are
    int8 and no longer in that layout."""
    count = 0
    for i, n in enumerate(model.graph.node):
        if n.op_type != "ReduceMean" or len(n.input) != 1:  # opset >= 18 passes axes as an input
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if sorted(attrs.get("axes", [])) not in ([2, 3], [-2, -1]) or attrs.get("keepdims", 1) != 1:
            continue
        pool = onnx.helper.make_node("GlobalAveragePool", list(n.input), list(n.output), name=n.name)
        model.graph.node[i].CopyFrom(pool)
        count += 1
    return count
