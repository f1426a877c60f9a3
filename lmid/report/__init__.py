"""The report: figures (matplotlib) and the self-contained HTML page.

inputs (reading) → figdata (figure arrays) + tables (table rows) → draw (PNGs, with captions from
captions) → html (Jinja2 templates in templates/). captions also writes workflow/report/*.rst.
"""
