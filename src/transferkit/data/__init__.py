"""Data: read tables and built-in sets, split them (seeded, stratified), batch them."""
