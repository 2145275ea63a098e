"""Label Studio ML backend: interactive EdgeSAM masks and batch pre-annotation over onnxruntime.

Start it with ``edgesam serve`` (or ``create_app()`` from :mod:`.app` under any ASGI server). The wire
protocol follows what Label Studio 1.23.2 sends (``/health``, ``/setup``, ``/predict``, ``/webhook``,
``/versions``, ``/metrics``), with label-studio-ml 2.x's environment variables. No torch on this path.
"""
