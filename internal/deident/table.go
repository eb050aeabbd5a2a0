// Code generated from PS3.15-2023b Table E.1-1 (Basic Profile column); DO NOT EDIT by hand.
// Z and D actions are both emptied (zero length), X removed, U replaced by a keyed UID.

package deident

// basicProfile is the Basic Application Level Confidentiality Profile
// of PS3.15-2023b Table E.1-1, one entry an attribute. Study, Series
// and SOP Instance UID, Patient's Name and Patient ID are handled apart
// (profile.go), as are the Curve and Overlay group ranges.
var basicProfile = map[Tag]action{
	0x00080020: actEmpty,  // Study Date
	0x00080023: actEmpty,  // Content Date
	0x00080030: actEmpty,  // Study Time
	0x00080033: actEmpty,  // Content Time
	0x00080050: actEmpty,  // Accession Number
	0x00080090: actEmpty,  // Referring Physician's Name
	0x0008009C: actEmpty,  // Consulting Physician's Name
	0x00080106: actEmpty,  // Context Group Version
	0x00080107: actEmpty,  // Context Group Local Version
	0x00100030: actEmpty,  // Patient's Birth Date
	0x00100040: actEmpty,  // Patient's Sex
	0x00120010: actEmpty,  // Clinical Trial Sponsor Name
	0x00120020: actEmpty,  // Clinical Trial Protocol ID
	0x00120021: actEmpty,  // Clinical Trial Protocol Name
	0x00120030: actEmpty,  // Clinical Trial Site ID
	0x00120031: actEmpty,  // Clinical Trial Site Name
	0x00120040: actEmpty,  // Clinical Trial Subject ID
	0x00120042: actEmpty,  // Clinical Trial Subject Reading ID
	0x00120050: actEmpty,  // Clinical Trial Time Point ID
	0x00120060: actEmpty,  // Clinical Trial Coordinating Center Name
	0x00120081: actEmpty,  // Clinical Trial Protocol Ethics Committee Name
	0x00180010: actEmpty,  // Contrast/Bolus Agent
	0x001811BB: actEmpty,  // Acquisition Field Of View Label
	0x00181203: actEmpty,  // Calibration DateTime
	0x00189074: actEmpty,  // Frame Acquisition DateTime
	0x00189151: actEmpty,  // Frame Reference DateTime
	0x00189367: actEmpty,  // X-Ray Source ID
	0x00189369: actEmpty,  // Source Start DateTime
	0x0018936A: actEmpty,  // Source End DateTime
	0x00189371: actEmpty,  // X-Ray Detector ID
	0x00189623: actEmpty,  // Functional Sync Pulse
	0x00189701: actEmpty,  // Decay Correction DateTime
	0x00189804: actEmpty,  // Exclusion Start DateTime
	0x00189919: actEmpty,  // Instruction Performed DateTime
	0x00200010: actEmpty,  // Study ID
	0x00340001: actEmpty,  // Flow Identifier Sequence
	0x00340002: actEmpty,  // Flow Identifier
	0x00340005: actEmpty,  // Source Identifier
	0x00340007: actEmpty,  // Frame Origin Timestamp
	0x003A0314: actEmpty,  // Impedance Measurement DateTime
	0x00400512: actEmpty,  // Container Identifier
	0x00400513: actEmpty,  // Issuer of the Container Identifier Sequence
	0x00400551: actEmpty,  // Specimen Identifier
	0x00400562: actEmpty,  // Issuer of the Specimen Identifier Sequence
	0x00400610: actEmpty,  // Specimen Preparation Sequence
	0x00401101: actEmpty,  // Person Identification Code Sequence
	0x00402016: actEmpty,  // Placer Order Number / Imaging Service Request
	0x00402017: actEmpty,  // Filler Order Number / Imaging Service Request
	0x0040A027: actEmpty,  // Verifying Organization
	0x0040A030: actEmpty,  // Verification DateTime
	0x0040A073: actEmpty,  // Verifying Observer Sequence
	0x0040A075: actEmpty,  // Verifying Observer Name
	0x0040A082: actEmpty,  // Participation DateTime
	0x0040A088: actEmpty,  // Verifying Observer Identification Code Sequence
	0x0040A120: actEmpty,  // DateTime
	0x0040A121: actEmpty,  // Date
	0x0040A122: actEmpty,  // Time
	0x0040A123: actEmpty,  // Person Name
	0x0040A13A: actEmpty,  // Referenced DateTime
	0x0040A730: actEmpty,  // Content Sequence
	0x00420011: actEmpty,  // Encapsulated Document
	0x00440104: actEmpty,  // Assertion DateTime
	0x00686226: actEmpty,  // Effective DateTime
	0x00686270: actEmpty,  // Information Issue DateTime
	0x006A0003: actEmpty,  // Annotation Group UID
	0x006A0005: actEmpty,  // Annotation Group Label
	0x00700001: actEmpty,  // Graphic Annotation Sequence
	0x00700084: actEmpty,  // Content Creator's Name
	0x0072000A: actEmpty,  // Hanging Protocol Creation DateTime
	0x0072005E: actEmpty,  // Selector AE Value
	0x0072005F: actEmpty,  // Selector AS Value
	0x00720061: actEmpty,  // Selector DA Value
	0x00720063: actEmpty,  // Selector DT Value
	0x00720065: actEmpty,  // Selector OB Value
	0x00720066: actEmpty,  // Selector LO Value
	0x00720068: actEmpty,  // Selector LT Value
	0x0072006A: actEmpty,  // Selector PN Value
	0x0072006B: actEmpty,  // Selector TM Value
	0x0072006C: actEmpty,  // Selector SH Value
	0x0072006D: actEmpty,  // Selector UN Value
	0x0072006E: actEmpty,  // Selector ST Value
	0x00720070: actEmpty,  // Selector UT Value
	0x00720071: actEmpty,  // Selector UR Value
	0x04000105: actEmpty,  // Digital Signature DateTime
	0x04000115: actEmpty,  // Certificate of Signer
	0x04000562: actEmpty,  // Attribute Modification DateTime
	0x04000563: actEmpty,  // Modifying System
	0x04000564: actEmpty,  // Source of Previous Values
	0x04000565: actEmpty,  // Reason for the Attribute Modification
	0x21000140: actEmpty,  // Destination AE
	0x30060002: actEmpty,  // Structure Set Label
	0x30060008: actEmpty,  // Structure Set Date
	0x30060009: actEmpty,  // Structure Set Time
	0x30060026: actEmpty,  // ROI Name
	0x300600A6: actEmpty,  // ROI Interpreter
	0x30080024: actEmpty,  // Treatment Control Point Date
	0x30080025: actEmpty,  // Treatment Control Point Time
	0x30080162: actEmpty,  // Safe Position Exit Date
	0x30080164: actEmpty,  // Safe Position Exit Time
	0x30080166: actEmpty,  // Safe Position Return Date
	0x30080168: actEmpty,  // Safe Position Return Time
	0x300A0002: actEmpty,  // RT Plan Label
	0x300A022C: actEmpty,  // Source Strength Reference Date
	0x300A022E: actEmpty,  // Source Strength Reference Time
	0x300A0608: actEmpty,  // Treatment Position Group Label
	0x300A0611: actEmpty,  // RT Accessory Holder Slot ID
	0x300A0615: actEmpty,  // RT Accessory Device Slot ID
	0x300A0619: actEmpty,  // Radiation Dose Identification Label
	0x300A0623: actEmpty,  // Radiation Dose In-Vivo Measurement Label
	0x300A062A: actEmpty,  // RT Tolerance Set Label
	0x300A067C: actEmpty,  // Radiation Generation Mode Label
	0x300A067D: actEmpty,  // Radiation Generation Mode Description
	0x300A0734: actEmpty,  // Treatment Tolerance Violation Description
	0x300A0736: actEmpty,  // Treatment Tolerance Violation DateTime
	0x300A073A: actEmpty,  // Recorded RT Control Point DateTime
	0x300A0741: actEmpty,  // Interlock DateTime
	0x300A0742: actEmpty,  // Interlock Description
	0x300A0760: actEmpty,  // Override DateTime
	0x300A0783: actEmpty,  // Interlock Origin Description
	0x300C0127: actEmpty,  // Beam Hold Transition DateTime
	0x300E0004: actEmpty,  // Review Date
	0x300E0005: actEmpty,  // Review Time
	0x3010000F: actEmpty,  // Conceptual Volume Combination Description
	0x30100017: actEmpty,  // Conceptual Volume Description
	0x3010001B: actEmpty,  // Device Alternate Identifier
	0x3010002D: actEmpty,  // Device Label
	0x30100033: actEmpty,  // User Content Label
	0x30100034: actEmpty,  // User Content Long Label
	0x30100035: actEmpty,  // Entity Label
	0x30100038: actEmpty,  // Entity Long Label
	0x30100043: actEmpty,  // Manufacturer's Device Identifier
	0x30100054: actEmpty,  // RT Prescription Label
	0x3010005A: actEmpty,  // RT Physician Intent Narrative
	0x3010005C: actEmpty,  // Reason for Superseding
	0x3010007A: actEmpty,  // Treatment Technique Notes
	0x3010007B: actEmpty,  // Prescription Notes
	0x3010007F: actEmpty,  // Fractionation Notes
	0x30100081: actEmpty,  // Prescription Notes Sequence
	0x00001000: actRemove, // Affected SOP Instance UID
	0x00080012: actRemove, // Instance Creation Date
	0x00080013: actRemove, // Instance Creation Time
	0x00080015: actRemove, // Instance Coercion DateTime
	0x00080021: actRemove, // Series Date
	0x00080022: actRemove, // Acquisition Date
	0x00080024: actRemove, // Overlay Date
	0x00080025: actRemove, // Curve Date
	0x0008002A: actRemove, // Acquisition DateTime
	0x00080031: actRemove, // Series Time
	0x00080032: actRemove, // Acquisition Time
	0x00080034: actRemove, // Overlay Time
	0x00080035: actRemove, // Curve Time
	0x00080054: actRemove, // Retrieve AE Title
	0x00080055: actRemove, // Station AE Title
	0x00080080: actRemove, // Institution Name
	0x00080081: actRemove, // Institution Address
	0x00080082: actRemove, // Institution Code Sequence
	0x00080092: actRemove, // Referring Physician's Address
	0x00080094: actRemove, // Referring Physician's Telephone Numbers
	0x00080096: actRemove, // Referring Physician Identification Sequence
	0x0008009D: actRemove, // Consulting Physician Identification Sequence
	0x00080201: actRemove, // Timezone Offset From UTC
	0x00081000: actRemove, // Network ID
	0x00081010: actRemove, // Station Name
	0x00081030: actRemove, // Study Description
	0x0008103E: actRemove, // Series Description
	0x00081040: actRemove, // Institutional Department Name
	0x00081041: actRemove, // Institutional Department Type Code Sequence
	0x00081048: actRemove, // Physician(s) of Record
	0x00081049: actRemove, // Physician(s) of Record Identification Sequence
	0x00081050: actRemove, // Performing Physician's Name
	0x00081052: actRemove, // Performing Physician Identification Sequence
	0x00081060: actRemove, // Name of Physician(s) Reading Study
	0x00081062: actRemove, // Physician(s) Reading Study Identification Sequence
	0x00081070: actRemove, // Operators' Name
	0x00081072: actRemove, // Operator Identification Sequence
	0x00081080: actRemove, // Admitting Diagnoses Description
	0x00081084: actRemove, // Admitting Diagnoses Code Sequence
	0x00081088: actRemove, // Pyramid Description
	0x00081110: actRemove, // Referenced Study Sequence
	0x00081111: actRemove, // Referenced Performed Procedure Step Sequence
	0x00081120: actRemove, // Referenced Patient Sequence
	0x00082111: actRemove, // Derivation Description
	0x00084000: actRemove, // Identifying Comments
	0x00100021: actRemove, // Issuer of Patient ID
	0x00100032: actRemove, // Patient's Birth Time
	0x00100050: actRemove, // Patient's Insurance Plan Code Sequence
	0x00100101: actRemove, // Patient's Primary Language Code Sequence
	0x00100102: actRemove, // Patient's Primary Language Modifier Code Sequence
	0x00101000: actRemove, // Other Patient IDs
	0x00101001: actRemove, // Other Patient Names
	0x00101002: actRemove, // Other Patient IDs Sequence
	0x00101005: actRemove, // Patient's Birth Name
	0x00101010: actRemove, // Patient's Age
	0x00101020: actRemove, // Patient's Size
	0x00101030: actRemove, // Patient's Weight
	0x00101040: actRemove, // Patient's Address
	0x00101050: actRemove, // Insurance Plan Identification
	0x00101060: actRemove, // Patient's Mother's Birth Name
	0x00101080: actRemove, // Military Rank
	0x00101081: actRemove, // Branch of Service
	0x00101090: actRemove, // Medical Record Locator
	0x00101100: actRemove, // Referenced Patient Photo Sequence
	0x00102000: actRemove, // Medical Alerts
	0x00102110: actRemove, // Allergies
	0x00102150: actRemove, // Country of Residence
	0x00102152: actRemove, // Region of Residence
	0x00102154: actRemove, // Patient's Telephone Numbers
	0x00102155: actRemove, // Patient's Telecom Information
	0x00102160: actRemove, // Ethnic Group
	0x00102180: actRemove, // Occupation
	0x001021A0: actRemove, // Smoking Status
	0x001021B0: actRemove, // Additional Patient History
	0x001021C0: actRemove, // Pregnancy Status
	0x001021D0: actRemove, // Last Menstrual Date
	0x001021F0: actRemove, // Patient's Religious Preference
	0x00102203: actRemove, // Patient's Sex Neutered
	0x00102297: actRemove, // Responsible Person
	0x00102299: actRemove, // Responsible Organization
	0x00104000: actRemove, // Patient Comments
	0x00120051: actRemove, // Clinical Trial Time Point Description
	0x00120071: actRemove, // Clinical Trial Series ID
	0x00120072: actRemove, // Clinical Trial Series Description
	0x00120082: actRemove, // Clinical Trial Protocol Ethics Committee Approval Number
	0x00120086: actRemove, // Ethics Committee Approval Effectiveness Start Date
	0x00120087: actRemove, // Ethics Committee Approval Effectiveness End Date
	0x0014407C: actRemove, // Calibration Time
	0x0014407E: actRemove, // Calibration Date
	0x0016002B: actRemove, // Maker Note
	0x0016004B: actRemove, // Device Setting Description
	0x0016004D: actRemove, // Camera Owner Name
	0x0016004E: actRemove, // Lens Specification
	0x0016004F: actRemove, // Lens Make
	0x00160050: actRemove, // Lens Model
	0x00160051: actRemove, // Lens Serial Number
	0x00160070: actRemove, // GPS Version ID
	0x00160071: actRemove, // GPS Latitude Ref
	0x00160072: actRemove, // GPS Latitude
	0x00160073: actRemove, // GPS Longitude Ref
	0x00160074: actRemove, // GPS Longitude
	0x00160075: actRemove, // GPS Altitude Ref
	0x00160076: actRemove, // GPS Altitude
	0x00160077: actRemove, // GPS Time Stamp
	0x00160078: actRemove, // GPS Satellites
	0x00160079: actRemove, // GPS Status
	0x0016007A: actRemove, // GPS Measure Mode
	0x0016007B: actRemove, // GPS DOP
	0x0016007C: actRemove, // GPS Speed Ref
	0x0016007D: actRemove, // GPS Speed
	0x0016007E: actRemove, // GPS Track Ref
	0x0016007F: actRemove, // GPS Track
	0x00160080: actRemove, // GPS Img Direction Ref
	0x00160081: actRemove, // GPS Img Direction
	0x00160082: actRemove, // GPS Map Datum
	0x00160083: actRemove, // GPS Dest Latitude Ref
	0x00160084: actRemove, // GPS Dest Latitude
	0x00160085: actRemove, // GPS Dest Longitude Ref
	0x00160086: actRemove, // GPS Dest Longitude
	0x00160087: actRemove, // GPS Dest Bearing Ref
	0x00160088: actRemove, // GPS Dest Bearing
	0x00160089: actRemove, // GPS Dest Distance Ref
	0x0016008A: actRemove, // GPS Dest Distance
	0x0016008B: actRemove, // GPS Processing Method
	0x0016008C: actRemove, // GPS Area Information
	0x0016008D: actRemove, // GPS Date Stamp
	0x0016008E: actRemove, // GPS Differential
	0x00180027: actRemove, // Intervention Drug Stop Time
	0x00180035: actRemove, // Intervention Drug Start Time
	0x00181000: actRemove, // Device Serial Number
	0x00181004: actRemove, // Plate ID
	0x00181005: actRemove, // Generator ID
	0x00181007: actRemove, // Cassette ID
	0x00181008: actRemove, // Gantry ID
	0x00181009: actRemove, // Unique Device Identifier
	0x0018100A: actRemove, // UDI Sequence
	0x00181012: actRemove, // Date of Secondary Capture
	0x00181014: actRemove, // Time of Secondary Capture
	0x00181030: actRemove, // Protocol Name
	0x00181042: actRemove, // Contrast/Bolus Start Time
	0x00181043: actRemove, // Contrast/Bolus Stop Time
	0x00181072: actRemove, // Radiopharmaceutical Start Time
	0x00181073: actRemove, // Radiopharmaceutical Stop Time
	0x00181078: actRemove, // Radiopharmaceutical Start DateTime
	0x00181079: actRemove, // Radiopharmaceutical Stop DateTime
	0x00181200: actRemove, // Date of Last Calibration
	0x00181201: actRemove, // Time of Last Calibration
	0x00181202: actRemove, // DateTime of Last Calibration
	0x00181400: actRemove, // Acquisition Device Processing Description
	0x00184000: actRemove, // Acquisition Comments
	0x00185011: actRemove, // Transducer Identification Sequence
	0x0018700A: actRemove, // Detector ID
	0x0018700C: actRemove, // Date of Last Detector Calibration
	0x0018700E: actRemove, // Time of Last Detector Calibration
	0x00189185: actRemove, // Respiratory Motion Compensation Technique Description
	0x00189373: actRemove, // X-Ray Detector Label
	0x0018937B: actRemove, // Multi-energy Acquisition Description
	0x0018937F: actRemove, // Decomposition Description
	0x00189424: actRemove, // Acquisition Protocol Description
	0x00189516: actRemove, // Start Acquisition DateTime
	0x00189517: actRemove, // End Acquisition DateTime
	0x00189937: actRemove, // Requested Series Description
	0x0018A002: actRemove, // Contribution DateTime
	0x0018A003: actRemove, // Contribution Description
	0x00200027: actRemove, // Pyramid Label
	0x00203401: actRemove, // Modifying Device ID
	0x00203403: actRemove, // Modified Image Date
	0x00203405: actRemove, // Modified Image Time
	0x00203406: actRemove, // Modified Image Description
	0x00204000: actRemove, // Image Comments
	0x00209158: actRemove, // Frame Comments
	0x00284000: actRemove, // Image Presentation Comments
	0x00320012: actRemove, // Study ID Issuer
	0x00320032: actRemove, // Study Verified Date
	0x00320033: actRemove, // Study Verified Time
	0x00320034: actRemove, // Study Read Date
	0x00320035: actRemove, // Study Read Time
	0x00321000: actRemove, // Scheduled Study Start Date
	0x00321001: actRemove, // Scheduled Study Start Time
	0x00321010: actRemove, // Scheduled Study Stop Date
	0x00321011: actRemove, // Scheduled Study Stop Time
	0x00321020: actRemove, // Scheduled Study Location
	0x00321021: actRemove, // Scheduled Study Location AE Title
	0x00321030: actRemove, // Reason for Study
	0x00321032: actRemove, // Requesting Physician
	0x00321033: actRemove, // Requesting Service
	0x00321040: actRemove, // Study Arrival Date
	0x00321041: actRemove, // Study Arrival Time
	0x00321050: actRemove, // Study Completion Date
	0x00321051: actRemove, // Study Completion Time
	0x00321060: actRemove, // Requested Procedure Description
	0x00321066: actRemove, // Reason for Visit
	0x00321067: actRemove, // Reason for Visit Code Sequence
	0x00321070: actRemove, // Requested Contrast Agent
	0x00324000: actRemove, // Study Comments
	0x00380004: actRemove, // Referenced Patient Alias Sequence
	0x00380010: actRemove, // Admission ID
	0x00380011: actRemove, // Issuer of Admission ID
	0x00380014: actRemove, // Issuer of Admission ID Sequence
	0x0038001A: actRemove, // Scheduled Admission Date
	0x0038001B: actRemove, // Scheduled Admission Time
	0x0038001C: actRemove, // Scheduled Discharge Date
	0x0038001D: actRemove, // Scheduled Discharge Time
	0x0038001E: actRemove, // Scheduled Patient Institution Residence
	0x00380020: actRemove, // Admitting Date
	0x00380021: actRemove, // Admitting Time
	0x00380030: actRemove, // Discharge Date
	0x00380032: actRemove, // Discharge Time
	0x00380040: actRemove, // Discharge Diagnosis Description
	0x00380050: actRemove, // Special Needs
	0x00380060: actRemove, // Service Episode ID
	0x00380061: actRemove, // Issuer of Service Episode ID
	0x00380062: actRemove, // Service Episode Description
	0x00380064: actRemove, // Issuer of Service Episode ID Sequence
	0x00380300: actRemove, // Current Patient Location
	0x00380400: actRemove, // Patient's Institution Residence
	0x00380500: actRemove, // Patient State
	0x00384000: actRemove, // Visit Comments
	0x003A0329: actRemove, // Waveform Filter Description
	0x003A032B: actRemove, // Filter Lookup Table Description
	0x00400001: actRemove, // Scheduled Station AE Title
	0x00400002: actRemove, // Scheduled Procedure Step Start Date
	0x00400003: actRemove, // Scheduled Procedure Step Start Time
	0x00400004: actRemove, // Scheduled Procedure Step End Date
	0x00400005: actRemove, // Scheduled Procedure Step End Time
	0x00400006: actRemove, // Scheduled Performing Physician's Name
	0x00400007: actRemove, // Scheduled Procedure Step Description
	0x00400009: actRemove, // Scheduled Procedure Step ID
	0x0040000B: actRemove, // Scheduled Performing Physician Identification Sequence
	0x00400010: actRemove, // Scheduled Station Name
	0x00400011: actRemove, // Scheduled Procedure Step Location
	0x00400012: actRemove, // Pre-Medication
	0x00400241: actRemove, // Performed Station AE Title
	0x00400242: actRemove, // Performed Station Name
	0x00400243: actRemove, // Performed Location
	0x00400244: actRemove, // Performed Procedure Step Start Date
	0x00400245: actRemove, // Performed Procedure Step Start Time
	0x00400250: actRemove, // Performed Procedure Step End Date
	0x00400251: actRemove, // Performed Procedure Step End Time
	0x00400253: actRemove, // Performed Procedure Step ID
	0x00400254: actRemove, // Performed Procedure Step Description
	0x00400275: actRemove, // Request Attributes Sequence
	0x00400280: actRemove, // Comments on the Performed Procedure Step
	0x00400310: actRemove, // Comments on Radiation Dose
	0x0040050A: actRemove, // Specimen Accession Number
	0x0040051A: actRemove, // Container Description
	0x00400555: actRemove, // Acquisition Context Sequence
	0x00400600: actRemove, // Specimen Short Description
	0x00400602: actRemove, // Specimen Detailed Description
	0x004006FA: actRemove, // Slide Identifier
	0x00401001: actRemove, // Requested Procedure ID
	0x00401002: actRemove, // Reason for the Requested Procedure
	0x00401004: actRemove, // Patient Transport Arrangements
	0x00401005: actRemove, // Requested Procedure Location
	0x0040100A: actRemove, // Reason for Requested Procedure Code Sequence
	0x00401010: actRemove, // Names of Intended Recipients of Results
	0x00401011: actRemove, // Intended Recipients of Results Identification Sequence
	0x00401102: actRemove, // Person's Address
	0x00401103: actRemove, // Person's Telephone Numbers
	0x00401104: actRemove, // Person's Telecom Information
	0x00401400: actRemove, // Requested Procedure Comments
	0x00402001: actRemove, // Reason for the Imaging Service Request
	0x00402004: actRemove, // Issue Date of Imaging Service Request
	0x00402005: actRemove, // Issue Time of Imaging Service Request
	0x00402008: actRemove, // Order Entered By
	0x00402009: actRemove, // Order Enterer's Location
	0x00402010: actRemove, // Order Callback Phone Number
	0x00402011: actRemove, // Order Callback Telecom Information
	0x00402400: actRemove, // Imaging Service Request Comments
	0x00403001: actRemove, // Confidentiality Constraint on Patient Data Description
	0x00404005: actRemove, // Scheduled Procedure Step Start DateTime
	0x00404008: actRemove, // Scheduled Procedure Step Expiration DateTime
	0x00404010: actRemove, // Scheduled Procedure Step Modification DateTime
	0x00404011: actRemove, // Expected Completion DateTime
	0x00404025: actRemove, // Scheduled Station Name Code Sequence
	0x00404027: actRemove, // Scheduled Station Geographic Location Code Sequence
	0x00404028: actRemove, // Performed Station Name Code Sequence
	0x00404030: actRemove, // Performed Station Geographic Location Code Sequence
	0x00404034: actRemove, // Scheduled Human Performers Sequence
	0x00404035: actRemove, // Actual Human Performers Sequence
	0x00404036: actRemove, // Human Performer's Organization
	0x00404037: actRemove, // Human Performer's Name
	0x00404050: actRemove, // Performed Procedure Step Start DateTime
	0x00404051: actRemove, // Performed Procedure Step End DateTime
	0x00404052: actRemove, // Procedure Step Cancellation DateTime
	0x0040A023: actRemove, // Findings Group Recording Date (Trial)
	0x0040A024: actRemove, // Findings Group Recording Time (Trial)
	0x0040A032: actRemove, // Observation DateTime
	0x0040A033: actRemove, // Observation Start DateTime
	0x0040A078: actRemove, // Author Observer Sequence
	0x0040A07A: actRemove, // Participant Sequence
	0x0040A07C: actRemove, // Custodial Organization Sequence
	0x0040A110: actRemove, // Date of Document or Verbal Transaction (Trial)
	0x0040A112: actRemove, // Time of Document or Verbal Transaction (Trial)
	0x0040A192: actRemove, // Observation Date (Trial)
	0x0040A193: actRemove, // Observation Time (Trial)
	0x0040A307: actRemove, // Current Observer (Trial)
	0x0040A352: actRemove, // Verbal Source (Trial)
	0x0040A353: actRemove, // Address (Trial)
	0x0040A354: actRemove, // Telephone Number (Trial)
	0x0040A358: actRemove, // Verbal Source Identifier Code Sequence (Trial)
	0x0040DB06: actRemove, // Template Version
	0x0040DB07: actRemove, // Template Local Version
	0x0040E004: actRemove, // HL7 Document Effective Time
	0x00440004: actRemove, // Approval Status DateTime
	0x0044000B: actRemove, // Product Expiration DateTime
	0x00440010: actRemove, // Substance Administration DateTime
	0x00440105: actRemove, // Assertion Expiration DateTime
	0x0050001B: actRemove, // Container Component ID
	0x00500020: actRemove, // Device Description
	0x00500021: actRemove, // Long Device Description
	0x006A0006: actRemove, // Annotation Group Description
	0x00700082: actRemove, // Presentation Creation Date
	0x00700083: actRemove, // Presentation Creation Time
	0x00700086: actRemove, // Content Creator's Identification Code Sequence
	0x00741234: actRemove, // Receiving AE
	0x00741236: actRemove, // Requesting AE
	0x00880200: actRemove, // Icon Image Sequence
	0x00880904: actRemove, // Topic Title
	0x00880906: actRemove, // Topic Subject
	0x00880910: actRemove, // Topic Author
	0x00880912: actRemove, // Topic Keywords
	0x01000420: actRemove, // SOP Authorization DateTime
	0x04000310: actRemove, // Certified Timestamp
	0x04000402: actRemove, // Referenced Digital Signature Sequence
	0x04000403: actRemove, // Referenced SOP Instance MAC Sequence
	0x04000404: actRemove, // MAC
	0x04000550: actRemove, // Modified Attributes Sequence
	0x04000551: actRemove, // Nonconforming Modified Attributes Sequence
	0x04000552: actRemove, // Nonconforming Data Element Value
	0x04000561: actRemove, // Original Attributes Sequence
	0x04000600: actRemove, // Instance Origin Status
	0x20300020: actRemove, // Text String
	0x21000040: actRemove, // Creation Date
	0x21000050: actRemove, // Creation Time
	0x21000070: actRemove, // Originator
	0x22000002: actRemove, // Label Text
	0x22000005: actRemove, // Barcode Value
	0x30020121: actRemove, // Position Acquisition Template Name
	0x30020123: actRemove, // Position Acquisition Template Description
	0x30060004: actRemove, // Structure Set Name
	0x30060006: actRemove, // Structure Set Description
	0x30060028: actRemove, // ROI Description
	0x30060038: actRemove, // ROI Generation Description
	0x30060085: actRemove, // ROI Observation Label
	0x30060088: actRemove, // ROI Observation Description
	0x30080054: actRemove, // First Treatment Date
	0x30080056: actRemove, // Most Recent Treatment Date
	0x30080105: actRemove, // Source Serial Number
	0x30080250: actRemove, // Treatment Date
	0x30080251: actRemove, // Treatment Time
	0x300A0003: actRemove, // RT Plan Name
	0x300A0004: actRemove, // RT Plan Description
	0x300A0006: actRemove, // RT Plan Date
	0x300A0007: actRemove, // RT Plan Time
	0x300A000B: actRemove, // Treatment Sites
	0x300A000E: actRemove, // Prescription Description
	0x300A0016: actRemove, // Dose Reference Description
	0x300A0072: actRemove, // Fraction Group Description
	0x300A00B2: actRemove, // Treatment Machine Name
	0x300A00C3: actRemove, // Beam Description
	0x300A00DD: actRemove, // Bolus Description
	0x300A0196: actRemove, // Fixation Device Description
	0x300A01A6: actRemove, // Shielding Device Description
	0x300A01B2: actRemove, // Setup Technique Description
	0x300A0216: actRemove, // Source Manufacturer
	0x300A02EB: actRemove, // Compensator Description
	0x300A0676: actRemove, // Equipment Frame of Reference Description
	0x300A078E: actRemove, // Patient Treatment Preparation Procedure Parameter Description
	0x300A0792: actRemove, // Patient Treatment Preparation Method Description
	0x300A0794: actRemove, // Patient Setup Photo Description
	0x300A079A: actRemove, // Displacement Reference Label
	0x300C0113: actRemove, // Reason for Omission Description
	0x300E0008: actRemove, // Reviewer Name
	0x30100036: actRemove, // Entity Name
	0x30100037: actRemove, // Entity Description
	0x3010004C: actRemove, // Intended Phase Start Date
	0x3010004D: actRemove, // Intended Phase End Date
	0x30100056: actRemove, // RT Treatment Approach Label
	0x30100061: actRemove, // Prior Treatment Dose Description
	0x30100077: actRemove, // Treatment Site
	0x30100085: actRemove, // Intended Fraction Start Time
	0x40000010: actRemove, // Arbitrary
	0x40004000: actRemove, // Text Comments
	0x40080040: actRemove, // Results ID
	0x40080042: actRemove, // Results ID Issuer
	0x40080100: actRemove, // Interpretation Recorded Date
	0x40080101: actRemove, // Interpretation Recorded Time
	0x40080102: actRemove, // Interpretation Recorder
	0x40080108: actRemove, // Interpretation Transcription Date
	0x40080109: actRemove, // Interpretation Transcription Time
	0x4008010A: actRemove, // Interpretation Transcriber
	0x4008010B: actRemove, // Interpretation Text
	0x4008010C: actRemove, // Interpretation Author
	0x40080111: actRemove, // Interpretation Approver Sequence
	0x40080112: actRemove, // Interpretation Approval Date
	0x40080113: actRemove, // Interpretation Approval Time
	0x40080114: actRemove, // Physician Approving Interpretation
	0x40080115: actRemove, // Interpretation Diagnosis Description
	0x40080118: actRemove, // Results Distribution List Sequence
	0x40080119: actRemove, // Distribution Name
	0x4008011A: actRemove, // Distribution Address
	0x40080200: actRemove, // Interpretation ID
	0x40080202: actRemove, // Interpretation ID Issuer
	0x40080300: actRemove, // Impressions
	0x40084000: actRemove, // Results Comments
	0xFFFAFFFA: actRemove, // Digital Signatures Sequence
	0xFFFCFFFC: actRemove, // Data Set Trailing Padding
	0x00001001: actUID,    // Requested SOP Instance UID
	0x00020003: actUID,    // Media Storage SOP Instance UID
	0x00041511: actUID,    // Referenced SOP Instance UID in File
	0x00080014: actUID,    // Instance Creator UID
	0x00080017: actUID,    // Acquisition UID
	0x00080019: actUID,    // Pyramid UID
	0x00080058: actUID,    // Failed SOP Instance UID List
	0x00081155: actUID,    // Referenced SOP Instance UID
	0x00081195: actUID,    // Transaction UID
	0x00083010: actUID,    // Irradiation Event UID
	0x00181002: actUID,    // Device UID
	0x0018100B: actUID,    // Manufacturer's Device Class UID
	0x00182042: actUID,    // Target UID
	0x00200052: actUID,    // Frame of Reference UID
	0x00200200: actUID,    // Synchronization Frame of Reference UID
	0x00209161: actUID,    // Concatenation UID
	0x00209164: actUID,    // Dimension Organization UID
	0x00281199: actUID,    // Palette Color Lookup Table UID
	0x00281214: actUID,    // Large Palette Color Lookup Table UID
	0x003A0310: actUID,    // Multiplex Group UID
	0x00400554: actUID,    // Specimen UID
	0x00404023: actUID,    // Referenced General Purpose Scheduled Procedure Step Transaction UID
	0x0040A124: actUID,    // UID
	0x0040A171: actUID,    // Observation UID
	0x0040A172: actUID,    // Referenced Observation UID (Trial)
	0x0040A402: actUID,    // Observation Subject UID (Trial)
	0x0040DB0C: actUID,    // Template Extension Organization UID
	0x0040DB0D: actUID,    // Template Extension Creator UID
	0x00620021: actUID,    // Tracking UID
	0x00640003: actUID,    // Source Frame of Reference UID
	0x0070031A: actUID,    // Fiducial UID
	0x00701101: actUID,    // Presentation Display Collection UID
	0x00701102: actUID,    // Presentation Sequence Collection UID
	0x00880140: actUID,    // Storage Media File-set UID
	0x04000100: actUID,    // Digital Signature UID
	0x30060024: actUID,    // Referenced Frame of Reference UID
	0x300600C2: actUID,    // Related Frame of Reference UID
	0x300A0013: actUID,    // Dose Reference UID
	0x300A0083: actUID,    // Referenced Dose Reference UID
	0x300A0609: actUID,    // Treatment Position Group UID
	0x300A0650: actUID,    // Patient Setup UID
	0x300A0700: actUID,    // Treatment Session UID
	0x300A0785: actUID,    // Referenced Treatment Position Group UID
	0x30100006: actUID,    // Conceptual Volume UID
	0x3010000B: actUID,    // Referenced Conceptual Volume UID
	0x30100013: actUID,    // Constituent Conceptual Volume UID
	0x30100015: actUID,    // Source Conceptual Volume UID
	0x30100031: actUID,    // Referenced Fiducials UID
	0x3010003B: actUID,    // RT Treatment Phase UID
	0x3010006E: actUID,    // Dosimetric Objective UID
	0x3010006F: actUID,    // Referenced Dosimetric Objective UID
}

// temporalVR is the VR of the profile's date and time attributes, for
// data sets in Implicit VR, where the file does not say.
var temporalVR = map[Tag]string{
	0x00080020: "DA", // Study Date
	0x00080023: "DA", // Content Date
	0x00080030: "TM", // Study Time
	0x00080033: "TM", // Content Time
	0x00100030: "DA", // Patient's Birth Date
	0x00181203: "DT", // Calibration DateTime
	0x00189074: "DT", // Frame Acquisition DateTime
	0x00189151: "DT", // Frame Reference DateTime
	0x00189369: "DT", // Source Start DateTime
	0x0018936A: "DT", // Source End DateTime
	0x00189701: "DT", // Decay Correction DateTime
	0x00189804: "DT", // Exclusion Start DateTime
	0x00189919: "DT", // Instruction Performed DateTime
	0x003A0314: "DT", // Impedance Measurement DateTime
	0x0040A030: "DT", // Verification DateTime
	0x0040A082: "DT", // Participation DateTime
	0x0040A120: "DT", // DateTime
	0x0040A121: "DA", // Date
	0x0040A122: "TM", // Time
	0x0040A13A: "DT", // Referenced DateTime
	0x00440104: "DT", // Assertion DateTime
	0x00686226: "DT", // Effective DateTime
	0x00686270: "DT", // Information Issue DateTime
	0x0072000A: "DT", // Hanging Protocol Creation DateTime
	0x04000105: "DT", // Digital Signature DateTime
	0x04000562: "DT", // Attribute Modification DateTime
	0x30060008: "DA", // Structure Set Date
	0x30060009: "TM", // Structure Set Time
	0x30080024: "DA", // Treatment Control Point Date
	0x30080025: "TM", // Treatment Control Point Time
	0x30080162: "DA", // Safe Position Exit Date
	0x30080164: "TM", // Safe Position Exit Time
	0x30080166: "DA", // Safe Position Return Date
	0x30080168: "TM", // Safe Position Return Time
	0x300A022C: "DA", // Source Strength Reference Date
	0x300A022E: "TM", // Source Strength Reference Time
	0x300A0736: "DT", // Treatment Tolerance Violation DateTime
	0x300A073A: "DT", // Recorded RT Control Point DateTime
	0x300A0741: "DT", // Interlock DateTime
	0x300A0760: "DT", // Override DateTime
	0x300C0127: "DT", // Beam Hold Transition DateTime
	0x300E0004: "DA", // Review Date
	0x300E0005: "TM", // Review Time
	0x00080012: "DA", // Instance Creation Date
	0x00080013: "TM", // Instance Creation Time
	0x00080015: "DT", // Instance Coercion DateTime
	0x00080021: "DA", // Series Date
	0x00080022: "DA", // Acquisition Date
	0x00080024: "DA", // Overlay Date
	0x00080025: "DA", // Curve Date
	0x0008002A: "DT", // Acquisition DateTime
	0x00080031: "TM", // Series Time
	0x00080032: "TM", // Acquisition Time
	0x00080034: "TM", // Overlay Time
	0x00080035: "TM", // Curve Time
	0x00100032: "TM", // Patient's Birth Time
	0x001021D0: "DA", // Last Menstrual Date
	0x00120086: "DA", // Ethics Committee Approval Effectiveness Start Date
	0x00120087: "DA", // Ethics Committee Approval Effectiveness End Date
	0x0014407C: "TM", // Calibration Time
	0x0014407E: "DA", // Calibration Date
	0x00180027: "TM", // Intervention Drug Stop Time
	0x00180035: "TM", // Intervention Drug Start Time
	0x00181042: "TM", // Contrast/Bolus Start Time
	0x00181043: "TM", // Contrast/Bolus Stop Time
	0x00181072: "TM", // Radiopharmaceutical Start Time
	0x00181073: "TM", // Radiopharmaceutical Stop Time
	0x00181078: "DT", // Radiopharmaceutical Start DateTime
	0x00181079: "DT", // Radiopharmaceutical Stop DateTime
	0x00189516: "DT", // Start Acquisition DateTime
	0x00189517: "DT", // End Acquisition DateTime
	0x0018A002: "DT", // Contribution DateTime
	0x00203403: "DA", // Modified Image Date
	0x00203405: "TM", // Modified Image Time
	0x00320032: "DA", // Study Verified Date
	0x00320033: "TM", // Study Verified Time
	0x00320034: "DA", // Study Read Date
	0x00320035: "TM", // Study Read Time
	0x00321000: "DA", // Scheduled Study Start Date
	0x00321001: "TM", // Scheduled Study Start Time
	0x00321010: "DA", // Scheduled Study Stop Date
	0x00321011: "TM", // Scheduled Study Stop Time
	0x00321040: "DA", // Study Arrival Date
	0x00321041: "TM", // Study Arrival Time
	0x00321050: "DA", // Study Completion Date
	0x00321051: "TM", // Study Completion Time
	0x0038001A: "DA", // Scheduled Admission Date
	0x0038001B: "TM", // Scheduled Admission Time
	0x0038001C: "DA", // Scheduled Discharge Date
	0x0038001D: "TM", // Scheduled Discharge Time
	0x00380020: "DA", // Admitting Date
	0x00380021: "TM", // Admitting Time
	0x00380030: "DA", // Discharge Date
	0x00380032: "TM", // Discharge Time
	0x00400002: "DA", // Scheduled Procedure Step Start Date
	0x00400003: "TM", // Scheduled Procedure Step Start Time
	0x00400004: "DA", // Scheduled Procedure Step End Date
	0x00400005: "TM", // Scheduled Procedure Step End Time
	0x00400244: "DA", // Performed Procedure Step Start Date
	0x00400245: "TM", // Performed Procedure Step Start Time
	0x00400250: "DA", // Performed Procedure Step End Date
	0x00400251: "TM", // Performed Procedure Step End Time
	0x00404005: "DT", // Scheduled Procedure Step Start DateTime
	0x00404008: "DT", // Scheduled Procedure Step Expiration DateTime
	0x00404010: "DT", // Scheduled Procedure Step Modification DateTime
	0x00404011: "DT", // Expected Completion DateTime
	0x00404050: "DT", // Performed Procedure Step Start DateTime
	0x00404051: "DT", // Performed Procedure Step End DateTime
	0x00404052: "DT", // Procedure Step Cancellation DateTime
	0x0040A032: "DT", // Observation DateTime
	0x0040A033: "DT", // Observation Start DateTime
	0x0040E004: "DT", // HL7 Document Effective Time
	0x00440004: "DT", // Approval Status DateTime
	0x0044000B: "DT", // Product Expiration DateTime
	0x00440010: "DT", // Substance Administration DateTime
	0x00440105: "DT", // Assertion Expiration DateTime
	0x00700082: "DA", // Presentation Creation Date
	0x00700083: "TM", // Presentation Creation Time
	0x01000420: "DT", // SOP Authorization DateTime
	0x21000040: "DA", // Creation Date
	0x21000050: "TM", // Creation Time
	0x30080054: "DA", // First Treatment Date
	0x30080056: "DA", // Most Recent Treatment Date
	0x30080250: "DA", // Treatment Date
	0x30080251: "TM", // Treatment Time
	0x300A0006: "DA", // RT Plan Date
	0x300A0007: "TM", // RT Plan Time
	0x3010004C: "DA", // Intended Phase Start Date
	0x3010004D: "DA", // Intended Phase End Date
	0x30100085: "TM", // Intended Fraction Start Time
	0x40080100: "DA", // Interpretation Recorded Date
	0x40080101: "TM", // Interpretation Recorded Time
	0x40080108: "DA", // Interpretation Transcription Date
	0x40080109: "TM", // Interpretation Transcription Time
	0x40080112: "DA", // Interpretation Approval Date
	0x40080113: "TM", // Interpretation Approval Time
	// Dates and times of the table whose names do not end in Date, Time
	// or DateTime, which the generation missed (PS3.6 gives their VR; the
	// Retain Longitudinal Modified Dates column says C for each).
	0x00080106: "DT", // Context Group Version
	0x00080107: "DT", // Context Group Local Version
	0x0016008D: "DT", // GPS Date Stamp
	0x00181012: "DA", // Date of Secondary Capture
	0x00181014: "TM", // Time of Secondary Capture
	0x00181200: "DA", // Date of Last Calibration
	0x00181201: "TM", // Time of Last Calibration
	0x00181202: "DT", // DateTime of Last Calibration
	0x0018700C: "DA", // Date of Last Detector Calibration
	0x0018700E: "TM", // Time of Last Detector Calibration
	0x00189623: "DT", // Functional Sync Pulse
	0x00402004: "DA", // Issue Date of Imaging Service Request
	0x00402005: "TM", // Issue Time of Imaging Service Request
	0x0040A023: "DA", // Findings Group Recording Date (Trial)
	0x0040A024: "TM", // Findings Group Recording Time (Trial)
	0x0040A110: "DA", // Date of Document or Verbal Transaction (Trial)
	0x0040A112: "TM", // Time of Document Creation or Verbal Transaction (Trial)
	0x0040A192: "DA", // Observation Date (Trial)
	0x0040A193: "TM", // Observation Time (Trial)
	0x0040DB06: "DT", // Template Version
	0x0040DB07: "DT", // Template Local Version
	0x00720061: "DA", // Selector DA Value
	0x00720063: "DT", // Selector DT Value
	0x0072006B: "TM", // Selector TM Value
}
