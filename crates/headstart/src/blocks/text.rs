//! The text block: CSV, TSV or JSONL files (or class folders of `.txt` files) read by column,
//! embedded by a transformer encoder through the feature cache, tokenised into windows for
//! fine-tuning by [`TextLearner`].

use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, TextBundleMeta, TextEncoderRef};
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::learn::task::{Block, Featurised, Opened, TrainBlock};
use crate::progress::Progress;
use crate::text::chunks::{self, chunk_budget, encode_docs};
use crate::text::data::{decode_utf8, read_rows, Columns, TextDataset};
use crate::text::tokenizer::Encoded;
use crate::text::{embed, resolve_model_dir, TextLearner, TextModel, TextTrainRequest};
use crate::train::finetune::FinetuneConfig;
use crate::train::HeadSpec;

/// Texts of a data set in order, with their pair texts for sentence-pair data.
#[derive(Debug, Clone, Default)]
pub struct TextData {
    pub texts: Vec<String>,
    pub pairs: Option<Vec<String>>,
    /// Where each text came from (`file.csv:12`); empty for texts given directly.
    pub origins: Vec<String>,
}

/// How text data is read and embedded; with a request, how a run trains.
pub struct TextBlock<'a> {
    pub req: Option<&'a TextTrainRequest>,
    pub columns: Columns,
    /// Replace invalid UTF-8 instead of failing.
    pub lossy: bool,
    pub cache: Option<PathBuf>,
    /// Batch size for embedding.
    pub batch_size: usize,
    /// Precision of the frozen-encoder pass (concrete: `auto` resolved).
    pub precision: Precision,
    /// Fine-tuning: at most this many chunks in one forward pass.
    pub chunk_batch: Option<usize>,
}

impl<'a> TextBlock<'a> {
    /// The block of a training request, its precision resolved on this machine.
    pub fn for_request(req: &'a TextTrainRequest) -> TextBlock<'a> {
        TextBlock {
            req: Some(req),
            columns: req.columns.clone(),
            lossy: req.lossy,
            cache: req.cache.clone(),
            batch_size: req.eval_batch_size.max(1),
            precision: req.precision.resolve(crate::precision::Family::Text),
            chunk_batch: req.model_options.chunk_batch,
        }
    }

    /// The block of a bundle's evaluation or prediction, embedding at `precision`.
    pub fn for_predict(columns: Columns, lossy: bool, cache_root: Option<&Path>, precision: Precision) -> TextBlock<'static> {
        let precision = precision.resolve(crate::precision::Family::Text);
        TextBlock { req: None, columns, lossy, cache: cache_root.map(Path::to_path_buf), batch_size: 32, precision, chunk_batch: None }
    }

    fn req(&self) -> &'a TextTrainRequest {
        self.req.expect("a training block has a request")
    }
}

impl<'a> Block for TextBlock<'a> {
    type Data = TextData;
    type Model = TextModel;
    type Inputs = Vec<Vec<Encoded>>;
    type Learner<'l>
        = TextLearner<'l>
    where
        Self: 'l;
    const NOUN: &'static str = "examples";

    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<TextData>> {
        let ds = TextDataset::open(path, &self.columns, classes, self.lossy)?;
        Ok(Opened {
            data: TextData { texts: ds.texts, pairs: ds.pairs, origins: ds.origins },
            labels: ds.labels,
            classes: ds.classes,
            skipped: ds.skipped,
            warnings: ds.warnings,
        })
    }

    fn append(&self, data: &mut TextData, more: TextData) {
        data.texts.extend(more.texts);
        data.origins.extend(more.origins);
        if let (Some(p), Some(vp)) = (data.pairs.as_mut(), more.pairs) {
            p.extend(vp);
        }
    }

    fn featurise(&self, model: &TextModel, data: &TextData, progress: &dyn Progress) -> Result<Featurised> {
        let e = embed(model, &data.texts, data.pairs.as_deref(), self.cache.as_deref(), self.batch_size, self.precision, progress)?;
        let mut f = Featurised::all(data.texts.len());
        (f.features, f.computed, f.reused, f.timing) = (e.features, e.computed, e.reused, Some(e.timing));
        Ok(f)
    }

    fn screen(&self, model: &TextModel, data: &TextData, progress: &dyn Progress) -> Result<(Featurised, Self::Inputs)> {
        let f = Featurised::all(data.texts.len());
        let docs = self.inputs(model, data, &f.ok, progress)?;
        Ok((f, docs))
    }

    fn inputs(&self, model: &TextModel, data: &TextData, ok: &[usize], progress: &dyn Progress) -> Result<Self::Inputs> {
        progress.message("tokenising");
        let texts: Vec<String> = ok.iter().map(|&i| data.texts[i].clone()).collect();
        let pairs: Option<Vec<String>> = data.pairs.as_ref().map(|p| ok.iter().map(|&i| p[i].clone()).collect());
        encode_docs(&model.tokenizer, &texts, pairs.as_deref(), &model.long_text)
    }

    fn learner<'l>(
        &'l self,
        model: &'l TextModel,
        docs: &'l Self::Inputs,
        labels: &[i64],
        num_classes: i64,
        ft: &'l FinetuneConfig,
        _: &dyn Progress,
    ) -> Result<TextLearner<'l>> {
        let budget = chunk_budget(self.chunk_batch, ft.batch_size, &model.long_text)?;
        // The new head's initial weights come from the seed, like everything else.
        tch::manual_seed(ft.seed as i64);
        Ok(TextLearner::new(model, num_classes, docs, labels, ft.unfreeze, ft.precision)?.with_chunk_budget(budget))
    }

    fn describe(&self, data: &TextData, i: usize) -> (String, Option<String>) {
        let origin = data.origins.get(i).cloned().unwrap_or_else(|| format!("text {}", i + 1));
        // The report shows a snippet; 500 characters keep the file small.
        let mut text: String = data.texts[i].chars().take(500).collect();
        if let Some(pair) = data.pairs.as_ref().and_then(|p| p.get(i)) {
            text = format!("{text} ‖ {}", pair.chars().take(250).collect::<String>());
        }
        (origin, Some(text))
    }
}

impl TrainBlock for TextBlock<'_> {
    type Request = TextTrainRequest;

    fn request(&self) -> &TextTrainRequest {
        self.req()
    }

    /// The request as run: `auto` recorded as the precision it resolved to.
    fn recorded(&self) -> std::borrow::Cow<'_, TextTrainRequest> {
        std::borrow::Cow::Owned(TextTrainRequest { precision: self.precision, ..self.req().clone() })
    }

    fn model_name(&self) -> String {
        self.req().model.clone()
    }

    fn load(&self, _: &[String], data: &TextData, warnings: &mut Vec<String>) -> Result<TextModel> {
        let req = self.req();
        let mut model = TextModel::load(&resolve_model_dir(&req.model)?, &req.model_options)?;
        let finetune = req.finetune.is_some();
        model.long_text = chunks::resolve(req.model_options.long_text, finetune, data.pairs.is_some(), model.tokenizer.window(), warnings)?;
        if finetune {
            // The head phase's embeddings and the bundle pool as the learner does.
            model.normalize = false;
        }
        Ok(model)
    }

    fn bundle_meta(&self, model: &TextModel, labels: Vec<String>, head: HeadSpec) -> Result<Bundle> {
        let encoder = TextEncoderRef {
            model: self.req().model.clone(),
            weights_sha256: model.weights_sha256.clone(),
            tokenizer_sha256: model.tokenizer.sha256.clone(),
            config: model.encoder.cfg.clone(),
            max_length: model.tokenizer.max_length,
            pooling: model.pooling,
            normalize: model.normalize,
            long_text: model.long_text,
        };
        let meta = TextBundleMeta {
            format_version: crate::bundle::FORMAT_VERSION,
            modality: "text".into(),
            created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
            encoder,
            columns: self.columns.clone(),
            labels,
            head,
            tuned: None,
            // The precision the head was trained on: the embeddings', or the fine-tuning's.
            precision: self.req().finetune.as_ref().map_or(self.precision, |ft| ft.precision.resolve(crate::precision::Family::Other)),
        };
        Ok(meta.into())
    }
}

/// Texts to classify, in order, each with where it came from.
#[derive(Debug, Clone, Default)]
pub struct PredictInputs {
    pub texts: Vec<String>,
    /// Second texts of sentence pairs (for a bundle trained on pairs).
    pub pairs: Option<Vec<String>>,
    /// Where each text came from: as the caller named it, a `.txt` file, or `file:line`.
    pub origins: Vec<String>,
    pub skipped: Vec<Skip>,
}

fn is_txt(f: &Path) -> bool {
    f.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// Reads the texts a text bundle classifies: `given` (origin, text) pairs, `.txt` files (one
/// text each; empty ones are skipped), and tables (CSV, TSV, JSONL) read by `columns`. A
/// bundle of sentence pairs (`columns.pair`) takes tables with both columns only.
pub fn predict_inputs(given: &[(String, String)], files: &[PathBuf], columns: &Columns, lossy: bool) -> Result<PredictInputs> {
    let pair = columns.pair.is_some();
    if pair && (!given.is_empty() || files.iter().any(|f| is_txt(f))) {
        return Err(Error::Usage("this bundle classifies sentence pairs: give CSV, TSV or JSONL files with both columns".into()));
    }
    let mut out = PredictInputs { pairs: pair.then(Vec::new), ..Default::default() };
    for (origin, t) in given {
        out.texts.push(t.clone());
        out.origins.push(origin.clone());
    }
    for f in files {
        if is_txt(f) {
            let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            let (t, _) = decode_utf8(f, &bytes, lossy)?;
            if t.trim().is_empty() {
                out.skipped.push(Skip { path: f.clone(), reason: "empty text".into() });
                continue;
            }
            out.texts.push(t);
            out.origins.push(f.display().to_string());
        } else {
            let rows = read_rows(f, columns, false, lossy)?;
            out.skipped.extend(rows.skipped);
            for r in rows.rows {
                out.texts.push(r.text);
                if let Some(p) = out.pairs.as_mut() {
                    p.push(r.pair.unwrap_or_default());
                }
                out.origins.push(r.origin);
            }
        }
    }
    if out.texts.is_empty() {
        return Err(match files.first() {
            Some(f) => Error::input(f, "nothing to classify: every text was skipped"),
            None => Error::Usage("nothing to classify".into()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_inputs_read_given_texts_txt_files_and_tables_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (a, empty, table) = (d.path().join("a.txt"), d.path().join("empty.TXT"), d.path().join("t.csv"));
        std::fs::write(&a, "\u{feff}a whole review\nover two lines\n").unwrap();
        std::fs::write(&empty, " \n").unwrap();
        std::fs::write(&table, "body,label\nfirst row,x\nsecond row,y\n").unwrap();
        let cols = Columns { text: "body".into(), ..Columns::default() };
        let given = vec![("given 1".to_string(), "typed in".to_string())];
        let got = predict_inputs(&given, &[a.clone(), empty.clone(), table.clone()], &cols, false).unwrap();
        assert_eq!(got.texts, vec!["typed in", "a whole review\nover two lines\n", "first row", "second row"]);
        assert_eq!(got.origins[..2], ["given 1".to_string(), a.display().to_string()]);
        assert!(got.origins[2].contains("t.csv"), "{:?}", got.origins);
        assert_eq!(got.skipped.len(), 1);
        assert_eq!((got.skipped[0].path.clone(), got.skipped[0].reason.as_str()), (empty, "empty text"));
        assert!(got.pairs.is_none());
        // Another column name than the bundle's: the table is read by it.
        let e = predict_inputs(&[], std::slice::from_ref(&table), &Columns::default(), false).unwrap_err().to_string();
        assert!(e.contains("no column `text`"), "{e}");
    }

    #[test]
    fn pair_bundles_take_tables_with_both_columns_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, table) = (d.path().join("a.txt"), d.path().join("p.tsv"));
        std::fs::write(&a, "one text").unwrap();
        std::fs::write(&table, "q\tp\nis it?\tyes it is\n").unwrap();
        let cols = Columns { text: "q".into(), label: "label".into(), pair: Some("p".into()) };
        let e = predict_inputs(&[], &[a], &cols, false).unwrap_err();
        assert_eq!(e.cause(), crate::error::Cause::Usage);
        let got = predict_inputs(&[], &[table], &cols, false).unwrap();
        assert_eq!((got.texts, got.pairs), (vec!["is it?".to_string()], Some(vec!["yes it is".to_string()])));
        let e = predict_inputs(&[], &[], &Columns::default(), false).unwrap_err().to_string();
        assert!(e.contains("nothing to classify"), "{e}");
    }
}
