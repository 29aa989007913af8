"""Bridges to the tools super-resolution users load models with.

``spandrel``: ``nlsa_triton.integrations.spandrel.register()`` teaches spandrel (the model
loader behind chaiNNer and ComfyUI's upscaler nodes) to recognise NLSN checkpoints. Each
bridge is imported on its own, so the package does not need the tool it bridges to.
"""
