"""Each scenario's Markdown tables, one module per scenario (``fanout``, ``serve``, ``scaleout``,
``idle``): from its results to the report's text, nothing measured here."""
