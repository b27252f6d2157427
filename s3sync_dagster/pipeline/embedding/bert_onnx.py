"""A BERT encoder's ONNX graph written straight from its safetensors weights with numpy: no torch needed.

What `torch.onnx.export` of transformers' `BertModel` (eager attention) computes, operator for operator:
embeddings (word + position + token type, LayerNorm), then per layer self-attention (scaled dot products,
the padding mask added as the float32 minimum, softmax), the output projection and LayerNorm, the exact
(erf) GELU feed-forward and LayerNorm; the graph's one output is `last_hidden_state`. Linear layers are a
MatMul by the transposed weight and an Add, as torch exports them, so ONNX Runtime's dynamic quantisation
(pipeline/embedding/default_model.py, int8) finds the same products. The vectors equal sentence-transformers' to
float32 rounding (s3sync_dagster_tests/engine/test_default_model.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17  # what the torch export used; LayerNormalization is an operator from 17 on


def export(model_dir: Path, destination: Path) -> None:
    """Write `destination` (a model.onnx) from the BERT weights and config.json in `model_dir`."""
    import onnx
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise ValueError(
            f"{model_dir / 'config.json'}: model_type {config.get('model_type')!r} with hidden_act "
            f"{config.get('hidden_act')!r}; only a BERT encoder with the exact (erf) GELU is written here"
        )
    weights = load_file(str(model_dir / "model.safetensors"))
    model = _Graph(config, weights).model()
    onnx.checker.check_model(model)
    onnx.save_model(model, str(destination))


class _Graph:
    def __init__(self, config: dict[str, Any], weights: dict[str, Any]) -> None:
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.epsilon = float(config.get("layer_norm_eps", 1e-12))
        if self.hidden % self.heads:
            raise ValueError(f"hidden_size {self.hidden} is not a multiple of num_attention_heads {self.heads}")
        self.weights = weights
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def model(self) -> Any:
        from onnx import TensorProto, helper

        hidden = self.embeddings()
        mask = self.attention_bias()
        for layer in range(self.layers):
            hidden = self.layer(f"encoder.layer.{layer}", hidden, mask)
        self.nodes.append(helper.make_node("Identity", [hidden], [OUTPUT_NAME]))
        dims = ["batch", "sequence"]
        graph = helper.make_graph(
            self.nodes,
            "bert_encoder",
            [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUT_NAMES],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [*dims, self.hidden])],
            initializer=self.initializers,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="s3sync-dagster")

    # --- building blocks ---------------------------------------------------------------------------------

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(value, name=name))
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        import numpy as np

        value = self.weights[name]
        if transpose:
            return self.const(f"{name}.T", np.ascontiguousarray(value.T))
        return self.const(name, value)

    def op(self, op_type: str, inputs: list[str], output: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def linear(self, prefix: str, x: str) -> str:
        product = self.op("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)], f"{prefix}.matmul")
        return self.op("Add", [product, self.weight(f"{prefix}.bias")], f"{prefix}.out")

    def layer_norm(self, prefix: str, x: str) -> str:
        scale, bias = self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")
        return self.op("LayerNormalization", [x, scale, bias], f"{prefix}.out", axis=-1, epsilon=self.epsilon)

    # --- the model ---------------------------------------------------------------------------------------

    def embeddings(self) -> str:
        import numpy as np

        words = self.op("Gather", [self.weight("embeddings.word_embeddings.weight"), "input_ids"], "embeddings.words")
        # Positions 0..sequence-1, as BertModel's position_ids buffer sliced to the input's length.
        shape = self.op("Shape", ["input_ids"], "embeddings.shape")
        length = self.op("Gather", [shape, self.const("one", np.array(1, dtype=np.int64))], "embeddings.length")
        zero, step = self.const("zero", np.array(0, dtype=np.int64)), self.const("step", np.array(1, dtype=np.int64))
        positions = self.op("Range", [zero, length, step], "embeddings.position_ids")
        position = self.op(
            "Gather", [self.weight("embeddings.position_embeddings.weight"), positions], "embeddings.positions"
        )
        types = self.op(
            "Gather", [self.weight("embeddings.token_type_embeddings.weight"), "token_type_ids"], "embeddings.types"
        )
        summed = self.op("Add", [self.op("Add", [words, position], "embeddings.sum1"), types], "embeddings.sum")
        return self.layer_norm("embeddings.LayerNorm", summed)

    def attention_bias(self) -> str:
        """[batch, 1, 1, sequence]: 0 where a token is real, the float32 minimum where it is padding."""
        import numpy as np
        from onnx import TensorProto

        mask = self.op("Cast", ["attention_mask"], "mask.float", to=TensorProto.FLOAT)
        axes = self.const("mask.axes", np.array([1, 2], dtype=np.int64))
        mask = self.op("Unsqueeze", [mask, axes], "mask.expanded")
        inverted = self.op("Sub", [self.const("one.float", np.array(1.0, dtype=np.float32)), mask], "mask.inverted")
        smallest = self.const("mask.min", np.array(np.finfo(np.float32).min, dtype=np.float32))
        return self.op("Mul", [inverted, smallest], "mask.bias")

    def heads_of(self, name: str, x: str, transpose: list[int]) -> str:
        import numpy as np

        split = self.const("heads.shape", np.array([0, 0, self.heads, self.hidden // self.heads], dtype=np.int64))
        return self.op("Transpose", [self.op("Reshape", [x, split], f"{name}.split")], f"{name}.heads", perm=transpose)

    def layer(self, prefix: str, x: str, mask: str) -> str:
        import numpy as np

        attention = f"{prefix}.attention.self"
        query = self.heads_of(f"{attention}.query", self.linear(f"{attention}.query", x), [0, 2, 1, 3])
        key = self.heads_of(f"{attention}.key", self.linear(f"{attention}.key", x), [0, 2, 3, 1])
        value = self.heads_of(f"{attention}.value", self.linear(f"{attention}.value", x), [0, 2, 1, 3])
        scores = self.op("MatMul", [query, key], f"{attention}.scores")
        scale = self.const("attention.scale", np.array(1 / np.sqrt(self.hidden // self.heads), dtype=np.float32))
        scores = self.op("Mul", [scores, scale], f"{attention}.scaled")
        scores = self.op("Add", [scores, mask], f"{attention}.masked")
        probabilities = self.op("Softmax", [scores], f"{attention}.probabilities", axis=-1)
        context = self.op("MatMul", [probabilities, value], f"{attention}.context")
        context = self.op("Transpose", [context], f"{attention}.context.t", perm=[0, 2, 1, 3])
        merged = self.const("heads.merged", np.array([0, 0, self.hidden], dtype=np.int64))
        context = self.op("Reshape", [context, merged], f"{attention}.merged")

        projected = self.linear(f"{prefix}.attention.output.dense", context)
        residual = self.op("Add", [projected, x], f"{prefix}.attention.output.residual")
        attended = self.layer_norm(f"{prefix}.attention.output.LayerNorm", residual)

        inner = self.gelu(f"{prefix}.intermediate", self.linear(f"{prefix}.intermediate.dense", attended))
        output = self.linear(f"{prefix}.output.dense", inner)
        residual = self.op("Add", [output, attended], f"{prefix}.output.residual")
        return self.layer_norm(f"{prefix}.output.LayerNorm", residual)

    def gelu(self, prefix: str, x: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))): transformers' `gelu` (ONNX has no Gelu operator before opset 20)."""
        import numpy as np

        root2 = self.const("gelu.sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
        half = self.const("gelu.half", np.array(0.5, dtype=np.float32))
        one = self.const("one.float", np.array(1.0, dtype=np.float32))
        erf = self.op("Erf", [self.op("Div", [x, root2], f"{prefix}.scaled")], f"{prefix}.erf")
        return self.op(
            "Mul",
            [self.op("Mul", [x, half], f"{prefix}.half"), self.op("Add", [erf, one], f"{prefix}.erf1")],
            f"{prefix}.gelu",
        )
