"""IR clean-up the frontend applies after conversion (each a pure ``Graph -> Graph`` pass).

* `FoldAffine`: a per-channel affine (a depthwise 1x1 convolution, which is what BatchNorm and
  constant Mul/Add/Sub/Div become) right after a Conv2d or Dense whose output nothing else reads
  is folded into that layer's weights and bias.
* `FusePad`: an explicit zero Pad2d feeding only a Conv2d (or an unpadded AvgPool2d) becomes the
  layer's own padding.
* `GlobalizePools`: a pool whose single window is the whole input becomes a global pool.

Neither pass crosses a quantization annotation: folding would remove a point where the model
says values are quantized.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from accelgen.ir import (
    AvgPool2d,
    Conv2d,
    Dense,
    GlobalAvgPool,
    GlobalMaxPool,
    Graph,
    Layer,
    MaxPool2d,
    Pad2d,
    rebuild,
)


def _is_channel_affine(layer: Layer) -> bool:
    return (
        isinstance(layer, Conv2d)
        and layer.kernel == (1, 1)
        and layer.stride == (1, 1)
        and not any(layer.padding)
        and layer.groups == layer.in_channels == layer.out_channels
        and layer.weight_quant is None
    )


def _is_pure_bias(layer: Conv2d) -> bool:
    return bool(np.all(layer.weight == 1.0))


def _sole_consumer(graph: Graph, layers: list[Layer], tensor: str) -> Layer | None:
    if tensor in graph.output_tensors or graph.tensors[tensor].quant is not None:
        return None
    users = [layer for layer in layers if tensor in layer.inputs]
    return users[0] if len(users) == 1 and users[0].inputs.count(tensor) == 1 else None


def fold_affine(graph: Graph) -> Graph:
    """Fold per-channel affines into the Conv2d/Dense that feeds them, until none is left."""
    layers = list(graph.layers)
    changed = True
    while changed:
        changed = False
        for i, affine in enumerate(layers):
            if not _is_channel_affine(affine):
                continue
            producer = next((p for p in layers if p.output == affine.inputs[0]), None)
            if not isinstance(producer, (Conv2d, Dense)):
                continue
            if _sole_consumer(graph, layers, producer.output) is not affine:
                continue
            assert isinstance(affine, Conv2d)
            pure_bias = _is_pure_bias(affine)
            # scaling would invalidate quantized weights; a pure bias add never touches them
            if not pure_bias and (producer.weight_quant or producer.bias_quant):
                continue
            if affine.bias_quant is not None and np.any(producer.bias != 0):
                continue  # the sum of two biases has no single quantization
            s = affine.weight.reshape(-1).astype(np.float64)
            t = affine.bias.astype(np.float64)
            w = producer.weight.astype(np.float64)
            scaled = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            folded = dataclasses.replace(
                producer,
                weight=producer.weight if pure_bias else scaled.astype(np.float32),
                bias=(producer.bias.astype(np.float64) * s + t).astype(np.float32),
                output=affine.output,
                bias_quant=affine.bias_quant or producer.bias_quant,
            )
            j = layers.index(producer)
            layers[j] = folded
            del layers[i]
            changed = True
            break
    return rebuild(graph, layers)


def fuse_pad(graph: Graph) -> Graph:
    """Turn zero Pad2d layers into the padding of the convolution or average pool they feed."""
    layers = list(graph.layers)
    changed = True
    while changed:
        changed = False
        for i, pad in enumerate(layers):
            if not isinstance(pad, Pad2d) or pad.value != 0.0:
                continue
            user = _sole_consumer(graph, layers, pad.output)
            if isinstance(user, Conv2d):
                fused: Layer = dataclasses.replace(
                    user,
                    inputs=pad.inputs,
                    in_shapes=pad.in_shapes,
                    padding=tuple(a + b for a, b in zip(user.padding, pad.padding, strict=True)),
                )
            elif isinstance(user, AvgPool2d) and not any(user.padding):
                fused = dataclasses.replace(
                    user, inputs=pad.inputs, in_shapes=pad.in_shapes, padding=pad.padding,
                    count_include_pad=True,
                )
            else:
                continue
            layers[layers.index(user)] = fused
            del layers[i]
            changed = True
            break
    return rebuild(graph, layers)


def globalize_pools(graph: Graph) -> Graph:
    """A pool whose one window covers the whole unpadded input is a global pool."""
    layers = []
    for layer in graph.layers:
        if (
            isinstance(layer, (AvgPool2d, MaxPool2d))
            and layer.kernel == layer.in_shape[:2]
            and not any(layer.padding)
            and layer.dilation == (1, 1)
            and layer.out_shape[:2] == (1, 1)
        ):
            cls = GlobalAvgPool if isinstance(layer, AvgPool2d) else GlobalMaxPool
            layer = cls(name=layer.name, inputs=layer.inputs, output=layer.output,
                        in_shapes=layer.in_shapes, out_shape=layer.out_shape)
        layers.append(layer)
    return rebuild(graph, layers)


def normalize(graph: Graph) -> Graph:
    return globalize_pools(fuse_pad(fold_affine(graph)))
