"""The isolation side: the code that talks to the container engine, and (in `sandbox.incontainer`) the
only project code the trainer image holds. Deliberately empty: the image copies this file, and importing
`sandbox.incontainer` must load nothing of the controller's half."""
