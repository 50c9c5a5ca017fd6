"""Labs: claims people make about LLMs, turned into measurements anyone can rerun.

Each lab is a module (a package when it has more than one experiment: labs/memory/) with functions
callable from Python, plus `add_arguments(parser)` and `run(args)` for the CLI
(`groundup lab NAME …`). Every lab runs on the harness (labs/harness.py): its experiment once per
seed, every number aggregated into a mean, sd and 95% interval over seeds, all of it in
results.json with the config, seeds, version, date and wall time; the report (`report(results)`)
and plots (`plots(results, out)`) are generated from results.json alone, so
`groundup lab NAME --report-from results.json --out DIR` rebuilds them without training, and
docs/labs/ is regenerated from the committed results files (labs/docs.py, `make docs`). Labs train
through groundup.train.loop.fit and call the sampler, checkpoint and plotting functions; they don't
re-implement them.
"""
