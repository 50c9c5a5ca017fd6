"""Engines that train the same GPT: `groundup.model` (PyTorch, autograd) is the fast path;
`groundup.engines.numpy` is the transparent one, with every gradient written out by hand."""
