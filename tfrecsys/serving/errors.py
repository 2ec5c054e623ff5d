"""The two failures of a model server: a request that fails, and a model that cannot be loaded."""

import grpc


class ServingError(Exception):
    """A failed request, with the gRPC status code TF Serving answers the same request with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ModelLoadError(Exception):
    """A model cannot be served: bad config, missing base path, no version, or an unloadable SavedModel."""
