"""A TF Serving API server and client for the SavedModel contract.

``server`` speaks TF Serving's gRPC API (and ``rest`` its REST API) over the same model directory layout and
config files as ``tensorflow_model_server``: ``servables`` keeps the loaded versions and resolves requests,
``inference`` runs Predict, Classify, Regress and MultiInference on one version, ``batching`` is the
batching session, ``monitoring`` the Prometheus metrics, ``config_files`` the batching and monitoring files;
``client`` queries either server. Nothing here imports tfrecsys model code: a SavedModel is served from its
signatures alone, exactly as the real server would serve it.
"""
