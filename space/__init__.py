"""The Space around ``dsct``: everything ``app.py`` serves but does not lay out.

One module per concern, imported one way (the layout in ``app.py`` → ``api`` → ``worker`` →
``planning`` → ``dsct``; ``words`` is read by all, ``controls`` and ``results`` by the layout and ``api``):

- ``words``: the page's and the API's words (labels, help, banners, endpoint descriptions);
- ``controls``: the Gradio components that carry settings, each leaving validation to dsct;
- ``results``: what the page shows of finished samples (captions, gallery rows, before/after);
- ``planning``: the ZeroGPU plan: what a request costs in GPU seconds and memory, the speed it learns;
- ``worker``: the GPU function and its streaming back to the event loop;
- ``api``: the endpoints (two full ones and the compact one, also the MCP tool) and their validators.

``import dsct`` never imports this package (nor gradio, nor spaces).
"""

import spaces  # noqa: F401 — first: on ZeroGPU it must patch CUDA before torch is imported
