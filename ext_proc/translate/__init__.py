"""Body translators: one module per provider schema, to/from the canonical form.

The canonical form is the OpenAI chat-completions schema: clients speak it, and each module
maps it to one upstream schema (requests) and back (responses, SSE streams, errors).
"""
