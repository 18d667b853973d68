"""Model definitions and model-file loading.

GGUF files (:mod:`.gguf`) and models known by name (:mod:`.named_models`) live here."""
