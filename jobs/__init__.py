"""arq job functions: thin wrappers that validate, bind log context and call the core."""
