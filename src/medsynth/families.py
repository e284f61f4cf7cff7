"""The model families: each name (cfg.model.family) and where its recipe lives.

The one registry: a new family is one new module in models/, one line here and one YAML in
configs/. Strings, not classes, so the config can be checked against the names without
importing any model (this module sits on the bottom floor; `medsynth.models.build_recipe`
imports the recipe it is asked for).
"""

FAMILIES = {
    "vae": "medsynth.models.vae:VAERecipe",
    "gan": "medsynth.models.gan:GANRecipe",
    "vaegan": "medsynth.models.vaegan:VAEGANRecipe",
    "pix2pix": "medsynth.models.translation:Pix2PixRecipe",
    "cyclegan": "medsynth.models.translation:CycleGANRecipe",
    "segmentation": "medsynth.models.segmentation:SegmentationRecipe",
    "spade": "medsynth.models.label_to_image:SPADERecipe",  # images from label maps
    "ldm": "medsynth.models.ldm:LatentDiffusionRecipe",
    "classifier": "medsynth.models.classifier:ClassifierRecipe",  # the domain feature network
    "fcn": "medsynth.models.fcn:FCNRecipe",  # the domain feature network trained to segment (CT organs)
}
