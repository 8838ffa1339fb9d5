"""Submit-script templates of the batch plugins: string.Template files, shipped as package data."""
