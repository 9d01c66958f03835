"""What people read: terminal text (text.py), HTML reports with plots (html.py), the table columns of a
comparison (columns.py), the memory plan and advice (plan.py). Pure functions of data: nothing here
reads a run folder."""
