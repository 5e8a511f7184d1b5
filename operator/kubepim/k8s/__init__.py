"""The only code that talks to the API server; 404 and 409 become named errors here."""
