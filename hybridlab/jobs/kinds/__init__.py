"""The built-in job kinds, one module each, exposing its JobKind as `KIND`.

hybridlab.jobs.registry.BUILTIN_KINDS names them; a module is imported the first time its
kind is asked for, so importing this package imports none of them."""
