"""The OpenAI Batch API's execution: input files checked (``input``), lines run through the
pipeline (``lines``), batches run as durable tasks and finished (``runner``)."""
