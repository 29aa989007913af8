"""The one error type the upscaler reports to the user."""


class UpscaleError(Exception):
    """Reported as ``error: <message>``. Raised for one image (a folder run records it and
    goes on) or for the whole run (bad weights, device, paths): exit status 1 either way."""
