"""Batch jobs and progressive answers on the task queue, in one place: ``schema`` (OpenAI Batch API
shapes), ``store`` (files, batches, jobs in Redis), ``queue`` (the Celery task queue), ``api`` (what
the HTTP endpoints do) and ``consumer`` (the Serve task consumer that routes chunks and jobs)."""
