"""Published results we measure ourselves against, all in one place. Copied from the papers
and READMEs named in `source`; used only to print beside our own rows."""

PUBLISHED = {
    "corel5k": [
        {"method": "RIA", "source": "Recurrent_Image_Annotation README", "backbone": "TResNet, 448, fine-tuned",
         "P": .412, "R": .458, "F1": .434, "n_plus": 161},
        {"method": "SR-CNN-RNN", "source": "Recurrent_Image_Annotation README", "backbone": "TResNet, 448, fine-tuned",
         "P": .405, "R": .391, "F1": .398, "n_plus": 145},
        {"method": "CNN + BCE", "source": "CNN_Image_Annotation README", "backbone": "TResNet-M, 448",
         "P": .453, "R": .385, "F1": .416, "n_plus": 147},
        {"method": "CNN + unsymmetrical loss", "source": "Salar & Ahmadi 2023", "backbone": "TResNet-M, 448",
         "P": .466, "R": .554, "F1": .506, "n_plus": 189},
        {"method": "CNN + unsymmetrical loss + MCC thresholds", "source": "Salar & Ahmadi 2023",
         "backbone": "TResNet-M, 448", "P": .484, "R": .563, "F1": .520, "n_plus": 191},
        {"method": "attention pooling", "source": "Salar & Ahmadi 2024", "backbone": "TResNet-M, 448",
         "P": .453, "R": .611, "F1": .520, "n_plus": 202},
    ],
}

PUBLISHED_FLICKR8K = [
    # Xu et al. 2015, Table 1, Flickr8k test, original photos, VGG features (METEOR as published)
    {"method": "Show, Attend and Tell (soft), published", "BLEU1": 67.0, "BLEU2": 44.8, "BLEU3": 29.9, "BLEU4": 19.5,
     "METEOR": 18.93},
    {"method": "Show, Attend and Tell (hard), published", "BLEU1": 67.0, "BLEU2": 45.7, "BLEU3": 31.4, "BLEU4": 21.3,
     "METEOR": 20.30},
]
