"""Index stores: the relational index of patients, studies, series and instances."""
