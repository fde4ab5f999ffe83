"""pyapp's Starlette server: static site, model files and manifests, split sessions, OpenAI API."""
