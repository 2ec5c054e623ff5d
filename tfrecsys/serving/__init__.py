"""A TF Serving API server and client for the SavedModel contract.

``server`` speaks TF Serving's gRPC API (and ``rest`` its REST API) over the same model directory layout as
``tensorflow_model_server``; ``client`` queries either server. Nothing here imports tfrecsys model code: a
SavedModel is served from its signatures alone, exactly as the real server would serve it.
"""
