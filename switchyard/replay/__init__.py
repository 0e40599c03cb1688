"""`switchyard replay`: what a routing change would do to a real trace, before the PR merges.

A trace (the Azure LLM inference trace CSV or the gateway's own request log) is driven through
the live selection and admission code against simulated backends, in simulated time:
`trace` reads traces, `engine` runs the event loop, `report` prints and draws the results,
`cli` is the subcommand (kept import-light: `switchyard up` loads it too).
"""
