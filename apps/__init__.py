"""Applications built on every part of edgesplit (``edgesplit demo``); unlike the torch-free core they may import
training, export and the runtime."""
