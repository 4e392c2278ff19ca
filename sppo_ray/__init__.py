"""sppo_ray."""
