"""The atlas: every filter of every conv layer of a model, rendered and browsable as a static web site."""
