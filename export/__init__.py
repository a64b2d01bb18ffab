"""Export: a training run dir -> a checked, self-describing model bundle (see ``export.pipeline``).

Stages (one module each): ``run_dir`` (read + cross-check the run), ``rebuild`` (slim net from spec +
weights), ``fold`` (BN and indicator into convs), ``deploy_wrapper`` (uint8 in, unit embeddings out),
``onnx_export``, ``onnx_flops``, ``torch_program``, ``tensorrt_build`` (lazy, GPU only), ``parity`` (gates),
``bundle_writer`` (atomic bundle dir), ``config`` (``--set`` overrides). ``cdd-export`` is ``export.__main__``.
"""

__all__: list[str] = []
