"""Labs: claims people make about LLMs, turned into measurements anyone can rerun.

Each lab is a module with functions callable from Python, plus `add_arguments(parser)` and
`run(args)` for the CLI (`groundup lab NAME …`). Results go to runs/<lab>/: results.json, PNG plots
(groundup.report.plots) and a short report.md. Labs call the trainer, sampler, checkpoint and
plotting functions; they don't re-implement them.
"""
