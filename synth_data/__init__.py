"""Turning logged failures into training datasets: each failure or piece of feedback no dataset has used yet
becomes SFT rows (a person's correction, else a grounded answer the teacher writes from fresh passages) with
paraphrases that teach the fact rather than the string, preference pairs and KTO labels, all in the serving prompt
(``builder``, ``teacher``). Every row is PII-redacted and decontaminated and passes the quality filters
(``filters``); injection-hardened copies teach the model that text in a passage is data (``hardening``). Datasets
are immutable: an erasure supersedes one with a clean copy and leaves a tombstone (``erasure``). ``pii_eval``
scores the redactor against a labelled corpus."""
